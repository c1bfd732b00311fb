//! Demo helpers.
