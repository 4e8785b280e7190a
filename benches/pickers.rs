use criterion::Criterion;

pub fn register(_c: &mut Criterion) {}
