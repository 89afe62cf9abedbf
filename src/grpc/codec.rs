//! The protobuf codec of every service we generate: prost's, except that a request that
//! cannot be decoded is the caller's fault. tonic's `ProstCodec` answers it with INTERNAL
//! (as for a server bug); we answer INVALID_ARGUMENT with prost's description, which names
//! the message and field where decoding stopped (e.g. metadata nested past prost's
//! recursion limit) and never carries the bytes themselves. The generated clients use it
//! too, so a reply a client cannot decode is also INVALID_ARGUMENT there.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

/// A [`Codec`] like `tonic_prost::ProstCodec` whose decode failures are INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ProstCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(PhantomData)
    }
}

/// Decodes `U`; see the module documentation for its errors.
#[derive(Debug, Clone)]
pub struct ProstDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for ProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(malformed)
    }
}

fn malformed(error: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("malformed message: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decode_failure_names_where_it_stopped_and_is_invalid_argument() {
        // Field 1 (Token.id, a string) with wire type varint: a wrong wire type.
        let error = crate::pb::v1::Token::decode(&[0x08, 0x01][..]).unwrap_err();
        let status = malformed(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("Token.id"), "{status:?}");
    }
}
