use cloacina::prelude::*;

#[computation_graph(graph = {
    a(src) -> b,
})]
pub mod g {
    pub fn a(src: Option<&u64>) -> u64 {
        src.copied().unwrap_or(0)
    }
    pub fn b(a: &String) -> String {
        a.clone()
    }
}

fn main() {}
