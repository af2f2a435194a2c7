//! Procedural macros of pupsource.
