use cloacina::prelude::*;

#[reactor(name = "r", accumulators = [a])]
pub struct R<T>(std::marker::PhantomData<T>);

fn main() {}
