//! What Verify needs beside the cache: the loader that batches its cache misses into few
//! store queries, and the budget that keeps floods of unknown secrets off the store.

pub mod budget;
pub mod loader;
