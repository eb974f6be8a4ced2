use cloacina::prelude::*;

#[computation_graph(graph = {
    a(src) -> b,
    b -> c,
    c -> b,
})]
pub mod g {
    pub fn a(src: Option<&u64>) -> u64 {
        src.copied().unwrap_or(0)
    }
    pub fn b(a: &u64, c: &u64) -> u64 {
        a + c
    }
    pub fn c(b: &u64) -> u64 {
        *b
    }
}

fn main() {}
