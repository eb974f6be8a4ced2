//! Compile-fail UI tests for `#[reactor]`, `#[computation_graph]`, `#[task]` and `#[workflow]`: every invalid
//! declaration is rejected at compile time, with the error on the offending name or type.
//!
//! Regenerate the expected `.stderr` files with `TRYBUILD=overwrite cargo test --test ui`.

#![allow(missing_docs)]

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
