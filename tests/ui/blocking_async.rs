use cloacina::prelude::*;

#[computation_graph(graph = { a(src) })]
mod g {
    #[node(blocking)]
    pub async fn a(src: Option<&u64>) -> u64 {
        src.copied().unwrap_or(0)
    }
}

fn main() {}
