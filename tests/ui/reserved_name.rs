use cloacina::prelude::*;

#[computation_graph(graph = { graph(src) })]
mod g {
    pub fn graph(src: Option<&u64>) -> u64 {
        src.copied().unwrap_or(0)
    }
}

fn main() {}
