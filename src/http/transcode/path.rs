//! Path templates of `google.api.http` rules: literal segments, `*`, field variables
//! (`{id}`, `{token.id}`, `{name=*}`) and a custom verb (`:rotate`), compiled once and
//! matched against request paths.

/// One segment of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// Matches exactly this text.
    Literal(String),
    /// Matches any one non-empty segment, bound to nothing.
    Any,
    /// Matches any one non-empty segment, bound to the field at this dotted path.
    Variable(String),
}

/// A compiled path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
    verb: Option<String>,
    text: String,
}

impl Template {
    /// Compiles a template such as `/v1/tokens/{id}:rotate`. Multi-segment patterns
    /// (`**`, `{name=a/*}`) are refused: no rule of ours needs them.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("{text}: a template starts with /"));
        };
        // The verb follows the last `:` outside braces.
        let mut depth = 0usize;
        let mut colon = None;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                ':' if depth == 0 => colon = Some(i),
                _ => {}
            }
        }
        let (path, verb) = match colon {
            Some(i) => (&rest[..i], Some(rest[i + 1..].to_owned())),
            None => (rest, None),
        };
        if verb.as_deref().is_some_and(|v| !is_literal(v)) {
            return Err(format!("{text}: a bad verb"));
        }
        let mut segments = Vec::new();
        for part in path.split('/') {
            let segment = if part == "*" {
                Segment::Any
            } else if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let field = match inner.split_once('=') {
                    None => inner,
                    Some((field, "*")) => field,
                    Some(_) => return Err(format!("{text}: only {{field}} or {{field=*}}")),
                };
                if field.is_empty() || !field.split('.').all(is_field_name) {
                    return Err(format!("{text}: a bad field path {field}"));
                }
                Segment::Variable(field.to_owned())
            } else if is_literal(part) {
                Segment::Literal(part.to_owned())
            } else {
                return Err(format!("{text}: a bad segment {part:?}"));
            };
            segments.push(segment);
        }
        Ok(Self {
            segments,
            verb,
            text: text.to_owned(),
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The dotted field paths the template binds, in order.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Variable(field) => Some(field.as_str()),
            _ => None,
        })
    }

    /// Matches a request path (still percent-encoded): the bound fields and their decoded
    /// values, or `None` when the path is not one of this template's, an empty or
    /// undecodable segment included.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let mut parts = rest.split('/');
        let mut bound = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) => {
                    if part != literal {
                        return None;
                    }
                }
                Segment::Any | Segment::Variable(_) => {
                    let value = percent_encoding::percent_decode_str(part)
                        .decode_utf8()
                        .ok()?;
                    if value.is_empty() {
                        return None;
                    }
                    if let Segment::Variable(field) = segment {
                        bound.push((field.clone(), value.into_owned()));
                    }
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(bound)
    }
}

fn is_literal(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

fn is_field_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        Template::parse(template).unwrap().matches(path)
    }

    #[test]
    fn variables_verbs_and_literals_match() {
        let id = |v: &str| Some(vec![("id".to_owned(), v.to_owned())]);
        assert_eq!(bound("/v1/tokens/{id}", "/v1/tokens/abc"), id("abc"));
        assert_eq!(
            bound("/v1/tokens/{id}:rotate", "/v1/tokens/a%2Fb:rotate"),
            id("a/b")
        );
        assert_eq!(
            bound("/v1/tokens:revoke", "/v1/tokens:revoke"),
            Some(vec![])
        );
        assert_eq!(
            bound("/v1/tokens/{token.id}", "/v1/tokens/x"),
            Some(vec![("token.id".to_owned(), "x".to_owned())])
        );
        assert_eq!(bound("/v1/tokens", "/v1/tokens:revoke"), None);
        assert_eq!(
            bound("/v1/tokens/{id}:rotate", "/v1/tokens/x:setEnabled"),
            None
        );
        assert_eq!(bound("/v1/tokens/{id}", "/v1/tokens/"), None);
        assert_eq!(bound("/v1/tokens/{id}", "/v1/tokens/a/b"), None);
        assert_eq!(bound("/v1/tokens/{id}", "/v1/tokens/%ff"), None);
        assert_eq!(bound("/v1/tokens", "v1/tokens"), None);
    }

    #[test]
    fn templates_we_cannot_serve_are_refused() {
        for bad in [
            "v1/x",
            "/v1/{a=**}",
            "/v1/{}",
            "/v1/{a-b}",
            "/v1/x:",
            "/v1/a b",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
