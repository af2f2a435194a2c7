//! The examples (`examples/`) and integration tests (`tests/`) of pupsource, in a package of
//! their own that is never published: they need the examples' binaries and a real PostgreSQL
//! server. This library holds nothing but the project README's code blocks, run as doctests so
//! that the tour it gives keeps compiling and passing.

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
