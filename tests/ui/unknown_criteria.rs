use cloacina::prelude::*;

#[reactor(name = "r", accumulators = [a, b], criteria = when_some(a))]
pub struct R;

fn main() {}
