use cloacina::prelude::*;

pub enum Parity {
    Even(u64),
    Odd(u64),
}

#[computation_graph(graph = { parity(src) => { Even -> even, Odd -> odd } })]
mod g {
    use super::*;

    #[node(blocking)]
    pub fn parity(src: Option<&u64>) -> Parity {
        match src.copied().unwrap_or(0) {
            v if v % 2 == 0 => Parity::Even(v),
            v => Parity::Odd(v),
        }
    }
    pub fn even(v: &u64) -> u64 {
        *v
    }
    pub fn odd(v: &u64) -> u64 {
        *v
    }
}

fn main() {}
