use cloacina::prelude::*;

pub enum Decision {
    Trade(u64),
}

#[computation_graph(graph = { decide(src) => {} })]
mod g {
    use super::*;

    pub fn decide(src: Option<&u64>) -> Decision {
        Decision::Trade(src.copied().unwrap_or(0))
    }
}

fn main() {}
