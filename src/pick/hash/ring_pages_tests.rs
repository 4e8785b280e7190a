//! Unit tests of the ring's pages: lookups, walks, patches and layouts.

use super::*;

fn points(hashes: impl IntoIterator<Item = u64>) -> Vec<Point> {
    let mut v: Vec<Point> = hashes
        .into_iter()
        .enumerate()
        .map(|(i, hash)| Point {
            hash,
            owner: i as u32,
            replica: 0,
        })
        .collect();
    v.sort_by_key(|p| p.hash);
    v
}

fn flat(circle: &Circle, (page, i): At) -> usize {
    (0..page).map(|q| circle.page_view(q).len()).sum::<usize>() + i
}

/// A lookup finds the first point at or after the position, as a binary search of
/// the sorted points does (wrapping to the first), for any layout.
#[test]
fn successor_is_the_binary_search() {
    for n in [1usize, 2, 3, 7, 100, 1000, 5000] {
        let pts = points((0..n as u64).map(crate::stable_hash::mix));
        let hashes: Vec<u64> = pts.iter().map(|p| p.hash).collect();
        for layout in [
            Layout::for_len(n),
            Layout::for_len(n / 3),
            Layout::for_len(n * 2),
        ] {
            let circle = Circle::laid_out(&pts, layout);
            let walked: Vec<Point> = circle.walk((0, 0)).collect();
            assert_eq!(walked, pts);
            let probes = (0..2000u64)
                .map(|i| crate::stable_hash::mix(i ^ 0x5555))
                .chain([0, 1, u64::MAX])
                .chain(
                    hashes
                        .iter()
                        .flat_map(|&h| [h, h.wrapping_add(1), h.wrapping_sub(1)]),
                );
            for h in probes {
                let expected = hashes.partition_point(|&p| p < h) % n;
                let (at, owner) = circle.successor(h).unwrap();
                assert_eq!(flat(&circle, at), expected, "n={n} {layout:?} h={h:#x}");
                assert_eq!(circle.get(at).unwrap().hash, hashes[expected]);
                assert_eq!(owner, pts[expected].owner);
            }
        }
    }
    let empty = Circle::from_sorted(&[]);
    assert_eq!(empty.successor(42), None);
    assert_eq!(empty.walk((0, 0)).count(), 0);
}

/// Rewriting pages keeps the rest, and a layout that no longer fits is redone.
#[test]
fn rewritten_pages_and_relayout() {
    let pts = points((0..1000u64).map(crate::stable_hash::mix));
    let circle = Circle::from_sorted(&pts);
    let layout = circle.layout();
    assert!(layout.fits(1000) && layout.fits(2000) && !layout.fits(400));
    // Drop page 3's points.
    let kept: Vec<Point> = pts
        .iter()
        .copied()
        .filter(|p| layout.page_of(p.hash) != 3)
        .collect();
    let empty = encode(&[], layout, &mut Vec::new());
    let rewritten = circle.with_pages(vec![(3, empty)], kept.len(), None);
    assert_eq!(rewritten.walk((0, 0)).collect::<Vec<_>>(), kept);
    assert_eq!(rewritten.layout(), layout);
    // Relabelled and relaid: the same points, new owners.
    let map: Vec<u32> = (0..1000).map(|i| 999 - i).collect();
    let relabelled = circle.with_pages(Vec::new(), 1000, Some(&map));
    let owners: Vec<u32> = relabelled.walk((0, 0)).map(|p| p.owner).collect();
    assert_eq!(
        owners,
        pts.iter().map(|p| 999 - p.owner).collect::<Vec<_>>()
    );
}

/// A patched page is the page written from its points, word for word: with a few
/// points put in and taken out (the directory shifted) and with many (written
/// again), at the page's ends and in the middle.
#[test]
fn a_patched_page_is_the_page_written_anew() {
    let pts = points((0..3000u64).map(crate::stable_hash::mix));
    let circle = Circle::from_sorted(&pts);
    let layout = circle.layout();
    let mut scratch = Vec::new();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..200 {
        let page = (next() as usize) % layout.pages();
        let view = circle.page_view(page);
        let n = view.len();
        let changes = if round % 2 == 0 { 3 } else { 40 };
        let mut removed: Vec<usize> = (0..changes).map(|_| next() as usize % n).collect();
        removed.sort_unstable();
        removed.dedup();
        // New points in this page (positions with the page's top bits).
        let (base, span) = match layout.page_bits {
            0 => (0, u64::MAX),
            bits => ((page as u64) << (64 - bits), (1u64 << (64 - bits)) - 1),
        };
        let mut new: Vec<Point> = (0..changes)
            .map(|i| Point {
                hash: base | (next() & span),
                owner: 10_000 + i,
                replica: 0,
            })
            .collect();
        if round % 5 == 0 {
            new.push(Point {
                hash: base,
                owner: 20_000,
                replica: 0,
            });
            new.push(Point {
                hash: base | span,
                owner: 20_001,
                replica: 0,
            });
        }
        new.sort_by_key(|p| p.hash);
        let placed: Vec<(usize, Point)> = new
            .iter()
            .map(|&f| (view.partition_point(|p| p.hash < f.hash), f))
            .collect();
        let mut expected: Vec<Point> = (0..n)
            .filter(|i| !removed.contains(i))
            .filter_map(|i| view.get(i))
            .chain(new.iter().copied())
            .collect();
        expected.sort_by_key(|p| p.hash);
        let patched = view.patched(&removed, &placed, &mut scratch);
        let written = encode(&expected, layout, &mut Vec::new());
        assert_eq!(patched, written, "round {round}, page {page}");
    }
}
