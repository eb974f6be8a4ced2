use cloacina::prelude::*;

/// A cache source type that is neither `Serialize` nor `Deserialize`.
pub struct Tick {
    pub price: u64,
}

#[computation_graph(graph = {
    a(tick),
})]
pub mod g {
    use super::Tick;

    pub fn a(tick: Option<&Tick>) -> u64 {
        tick.map_or(0, |t| t.price)
    }
}

fn main() {}
