//! Consistent hashing: lookup per key (including hashing a 16-byte key) and table build
//! time, at N ∈ {8, 64, 1024}. The floor — FNV-1a over the same 16 bytes, mod n, the
//! cheapest possible (non-consistent) key-to-backend map — runs in the same group.
//! Peer reference (not run here, quoted by issue #3 on this kind of machine):
//! pingora-load-balancing 0.9 Ketama `iter(key).next()`: 60 / 76 / 133 ns at N = 8 / 64 / 1024.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use tower_lb::affinity::hash_key;
use tower_lb::{
    AnyPicker, BoundedLoad, Jump, Maglev, PickContext, Picker, Rendezvous, Ring, Snapshot, Weight,
};

const SIZES: [usize; 3] = [8, 64, 1024];

/// The i-th 16-byte key: distinct for every i, so lookups are spread over the table.
#[inline]
fn key16(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..].copy_from_slice(&(i ^ 0x5555_5555_5555_5555).to_le_bytes());
    k
}

#[inline]
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

fn snapshot(n: usize, weighted: bool) -> Snapshot<String> {
    Snapshot::build((0..n).map(|i| {
        let w = if weighted { 1 + (i as u64 % 4) } else { 1 };
        (
            format!("10.0.{}.{}:8080", i / 256, i % 256),
            Weight::new(w).unwrap(),
        )
    }))
    .unwrap()
}

fn lookup<P: Picker<String>>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    picker: &P,
    snapshot: &Snapshot<String>,
) {
    let table = picker.prepare(snapshot, None);
    group.bench_with_input(BenchmarkId::new(name, snapshot.len()), &(), |b, _| {
        let mut i = 0u64;
        b.iter(|| {
            i = i.wrapping_add(1);
            let ctx = PickContext::new().with_hash(hash_key(&key16(i)));
            picker.pick(&table, black_box(snapshot), &ctx)
        })
    });
}

fn build<P: Picker<String>>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    picker: &P,
    snapshot: &Snapshot<String>,
) {
    group.bench_with_input(BenchmarkId::new(name, snapshot.len()), &(), |b, _| {
        b.iter(|| picker.prepare(black_box(snapshot), None))
    });
}

pub fn register(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash-lookup");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let equal = snapshot(n, false);
        let weighted = snapshot(n, true);
        group.bench_with_input(
            BenchmarkId::new("fnv1a-16B mod n (floor)", n),
            &n,
            |b, &n| {
                let mut i = 0u64;
                b.iter(|| {
                    i = i.wrapping_add(1);
                    fnv1a(&key16(i)) % black_box(n as u64)
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("xxh3-16B mod n", n), &n, |b, &n| {
            let mut i = 0u64;
            b.iter(|| {
                i = i.wrapping_add(1);
                hash_key(&key16(i)) % black_box(n as u64)
            })
        });
        lookup(&mut group, "maglev", &Maglev::new(), &equal);
        // A strategy chosen by name: the difference is the run-time choice's `match`.
        let any_maglev: AnyPicker = "maglev".parse().unwrap();
        lookup(&mut group, "AnyPicker(maglev)", &any_maglev, &equal);
        lookup(&mut group, "maglev weighted", &Maglev::new(), &weighted);
        lookup(&mut group, "ring", &Ring::new(), &equal);
        lookup(&mut group, "jump", &Jump::new(), &equal);
        lookup(
            &mut group,
            "jump (Lamping-Veach)",
            &Jump::lamping_veach(),
            &equal,
        );
        lookup(&mut group, "rendezvous", &Rendezvous::new(), &equal);
        lookup(
            &mut group,
            "rendezvous weighted",
            &Rendezvous::new(),
            &weighted,
        );
        lookup(
            &mut group,
            "bounded maglev",
            &BoundedLoad::new(Maglev::new()),
            &equal,
        );
        lookup(
            &mut group,
            "bounded ring",
            &BoundedLoad::new(Ring::new()),
            &equal,
        );
    }
    group.finish();

    let mut group = c.benchmark_group("hash-build");
    group.sample_size(10);
    for n in SIZES {
        let equal = snapshot(n, false);
        build(&mut group, "maglev", &Maglev::new(), &equal);
        build(&mut group, "ring", &Ring::new(), &equal);
        build(&mut group, "jump", &Jump::new(), &equal);
        build(&mut group, "rendezvous", &Rendezvous::new(), &equal);
    }
    group.finish();
}
