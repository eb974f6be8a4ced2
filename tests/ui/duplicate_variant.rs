use cloacina::prelude::*;

pub enum Decision {
    Go(u64),
    Halt(u64),
}

#[computation_graph(graph = { decide(src) => { Go -> go, Go -> halt } })]
pub mod g {
    use super::Decision;

    pub fn decide(src: Option<&u64>) -> Decision {
        match src {
            Some(v) => Decision::Go(*v),
            None => Decision::Halt(0),
        }
    }
    pub fn go(v: &u64) -> u64 {
        *v
    }
    pub fn halt(v: &u64) -> u64 {
        *v
    }
}

fn main() {}
