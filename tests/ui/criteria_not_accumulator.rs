use cloacina::prelude::*;

#[reactor(name = "r", accumulators = [a, b], criteria = when_any(a, c))]
pub struct R;

fn main() {}
