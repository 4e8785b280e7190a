//! The ring's storage: the circle cut into 2^b *pages* by the top b bits of a position,
//! each page's points sorted in one shared allocation of its own, with its own
//! directory. A change clones the page array (one reference-count increment a page)
//! and rewrites only the pages its points fall in, so it costs the pages it touches,
//! not the ring.
//!
//! A page is one `Arc<[u64]>`: first its directory, 2^s + 1 `u32` entries two to a word
//! (entry k = the first point of the page whose next s bits of position, after the
//! page's b, are ≥ k; the last = the page's point count), then its points, two words
//! each: the position, and the owner's stable slot (low half) with the replica number
//! (high half). A lookup reads the page pointer, one directory word and about one
//! point: the layout of the old single directory, one pointer away.

use std::sync::Arc;

/// The largest directory in all: 2²⁴ entries; past it points per entry grow.
const MAX_DIRECTORY_BITS: u32 = 24;

/// Past this many points put in or taken out, a patched page's directory is written
/// again rather than shifted once per point.
const MAX_SHIFTS: usize = 8;

/// Directory bits per page: 128 entries, so a page holds 64 to 256 points (0.5 to 2
/// an entry, as the layout lets the ring grow to twice its size before it is redone).
const SUB_BITS: u32 = 7;

/// One point on the circle: replica `replica` of the member in stable slot `owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Point {
    pub(super) hash: u64,
    pub(super) owner: u32,
    pub(super) replica: u32,
}

/// How the circle is cut: 2^`page_bits` pages of 2^`sub_bits` directory entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    page_bits: u32,
    sub_bits: u32,
}

impl Layout {
    /// Directory bits in all for `points` points: ⌈log₂ points⌉, so 1 or 2 entries a
    /// point, as a single directory would have.
    fn bits_for(points: usize) -> u32 {
        let bits = usize::BITS - (points.max(2) - 1).leading_zeros();
        bits.clamp(1, MAX_DIRECTORY_BITS)
    }

    /// The layout for a ring of `points` points.
    pub(super) fn for_len(points: usize) -> Layout {
        let bits = Self::bits_for(points);
        let sub_bits = bits.min(SUB_BITS);
        Layout {
            page_bits: bits - sub_bits,
            sub_bits,
        }
    }

    /// Whether this layout still serves a ring of `points` points: it may grow to twice
    /// the size the layout was made for (≤ 2 points an entry) and not shrink below it,
    /// so a set going back and forth across a power of two is laid out again at most
    /// once.
    pub(super) fn fits(self, points: usize) -> bool {
        let bits = self.page_bits + self.sub_bits;
        let want = Self::bits_for(points);
        want == bits || want == bits + 1
    }

    /// How many pages.
    pub(super) fn pages(self) -> usize {
        1 << self.page_bits
    }

    /// The page of position `h`: its top `page_bits` bits.
    #[inline]
    pub(super) fn page_of(self, h: u64) -> usize {
        // Shifted in two steps, so `page_bits = 0` (one page) needs no branch.
        ((h >> 1) >> (63 - self.page_bits)) as usize
    }

    /// The directory entry of position `h` within its page: the next `sub_bits` bits.
    #[inline]
    fn entry_of(self, h: u64) -> usize {
        (((h << self.page_bits) >> 1) >> (63 - self.sub_bits)) as usize
    }

    /// Words taken by a page's directory: 2^s + 1 entries, two a word.
    #[inline]
    fn directory_words(self) -> usize {
        ((1usize << self.sub_bits) + 2) / 2
    }
}

/// One page: its directory, then its points.
pub(super) type Page = Arc<[u64]>;

/// The circle: every page, in order.
#[derive(Clone)]
pub(super) struct Circle {
    pages: Box<[Page]>,
    layout: Layout,
    len: usize,
}

/// Where a point is: its page, and its place in the page.
pub(super) type At = (usize, usize);

impl Circle {
    /// The circle of `points`, sorted in circle order, laid out for their number.
    pub(super) fn from_sorted(points: &[Point]) -> Circle {
        Self::laid_out(points, Layout::for_len(points.len()))
    }

    /// The circle of `points`, sorted in circle order, laid out by `layout`.
    fn laid_out(points: &[Point], layout: Layout) -> Circle {
        let mut scratch = Vec::new();
        let mut rest = points;
        let pages = (0..layout.pages())
            .map(|page| {
                let n = rest.partition_point(|p| layout.page_of(p.hash) <= page);
                let (mine, after) = rest.split_at(n);
                rest = after;
                encode(mine, layout, &mut scratch)
            })
            .collect();
        Circle {
            pages,
            layout,
            len: points.len(),
        }
    }

    /// How the circle is cut.
    pub(super) fn layout(&self) -> Layout {
        self.layout
    }

    /// How many points.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Page `page`, to read and patch.
    pub(super) fn page_view(&self, page: usize) -> PageView<'_> {
        let words = self.pages.get(page).map_or(&[][..], |p| &p[..]);
        let (directory, points) = words.split_at(self.layout.directory_words().min(words.len()));
        PageView {
            layout: self.layout,
            directory,
            points,
        }
    }

    /// The same circle with the pages in `rewritten` (page index, the page as
    /// [`PageView::patched`] writes it) replaced, and `len` points in all. Relaid for `len`
    /// when the layout no longer fits it, or when `relabel` is given (new slot by old).
    pub(super) fn with_pages(
        &self,
        rewritten: Vec<(usize, Page)>,
        len: usize,
        relabel: Option<&[u32]>,
    ) -> Circle {
        let mut pages = self.pages.clone();
        for (page, written) in rewritten {
            if let Some(slot) = pages.get_mut(page) {
                *slot = written;
            }
        }
        let circle = Circle {
            pages,
            layout: self.layout,
            len,
        };
        if relabel.is_none() && self.layout.fits(len) {
            return circle;
        }
        let mut all: Vec<Point> = Vec::with_capacity(len);
        all.extend(circle.walk((0, 0)));
        if let Some(map) = relabel {
            for p in &mut all {
                p.owner = map.get(p.owner as usize).copied().unwrap_or(p.owner);
            }
        }
        let layout = if self.layout.fits(len) {
            self.layout
        } else {
            Layout::for_len(len)
        };
        Self::laid_out(&all, layout)
    }

    /// Where the first point at or after position `h` is, clockwise (wrapping round),
    /// and its owner; `None` on an empty circle.
    #[inline]
    pub(super) fn successor(&self, h: u64) -> Option<(At, u32)> {
        let layout = self.layout;
        let page = layout.page_of(h);
        let words = self.pages.get(page)?;
        let k = layout.entry_of(h);
        let start = words.get(k / 2).map_or(0, |w| (w >> (32 * (k % 2))) as u32) as usize;
        let points = words.get(layout.directory_words()..).unwrap_or_default();
        // The points under entry k are at or past its start, and those of later entries
        // above `h`: the first one at or after `h` is the first not below it from there.
        let mut i = 2 * start;
        while let Some(&p) = points.get(i) {
            if p >= h {
                let owner = points.get(i + 1).map_or(u32::MAX, |&w| w as u32);
                return Some(((page, i / 2), owner));
            }
            i += 2;
        }
        self.first_from(page + 1)
    }

    /// The first point of the first non-empty page from `page` on, wrapping round, and
    /// its owner.
    #[cold]
    fn first_from(&self, page: usize) -> Option<(At, u32)> {
        let dir_words = self.layout.directory_words();
        let count = self.pages.len();
        (page..count).chain(0..page.min(count)).find_map(|q| {
            let owner = *self.pages.get(q)?.get(dir_words + 1)?;
            Some(((q, 0), owner as u32))
        })
    }

    /// The point at `at`.
    #[inline]
    pub(super) fn get(&self, (page, i): At) -> Option<Point> {
        let words = self.pages.get(page)?;
        let at = self.layout.directory_words() + 2 * i;
        Some(decode(*words.get(at)?, *words.get(at + 1)?))
    }

    /// Every point once, clockwise from `at` (a point's place), wrapping round.
    pub(super) fn walk(&self, at: At) -> Walk<'_> {
        Walk {
            circle: self,
            at,
            left: self.len,
        }
    }

    /// How many pages differ from `other`'s (not shared with it), and how many pages
    /// there are.
    #[cfg(test)]
    pub(super) fn pages_not_in(&self, other: &Circle) -> (usize, usize) {
        let differ = if self.layout != other.layout {
            self.pages.len()
        } else {
            self.pages
                .iter()
                .zip(&other.pages)
                .filter(|(a, b)| !Arc::ptr_eq(a, b))
                .count()
        };
        (differ, self.pages.len())
    }
}

/// One page of a [`Circle`]: its directory words and its point words.
pub(super) struct PageView<'a> {
    layout: Layout,
    directory: &'a [u64],
    points: &'a [u64],
}

impl PageView<'_> {
    /// How many points.
    pub(super) fn len(&self) -> usize {
        self.points.len() / 2
    }

    /// Point `i`.
    pub(super) fn get(&self, i: usize) -> Option<Point> {
        Some(decode(
            *self.points.get(2 * i)?,
            *self.points.get(2 * i + 1)?,
        ))
    }

    /// The index of the first point for which `before` is false (the points being
    /// ordered so that `before` holds up to some index and not past it).
    pub(super) fn partition_point(&self, before: impl Fn(&Point) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(p) if before(&p) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }

    /// This page with the points at `removed` (indices, ascending) taken out and the
    /// points of `added` put in, each before the old point at its index (ascending,
    /// in circle order); written in `scratch`. The kept points are copied in runs and
    /// the directory shifted by the count of points taken out and put in before each
    /// entry: O(page + changes), no per-point work.
    pub(super) fn patched(
        &self,
        removed: &[usize],
        added: &[(usize, Point)],
        scratch: &mut Vec<u64>,
    ) -> Page {
        let layout = self.layout;
        let n = self.len();
        scratch.clear();
        scratch.extend_from_slice(self.directory);
        let (mut cur, mut r, mut a) = (0, 0, 0);
        loop {
            let next_removed = removed.get(r).copied().unwrap_or(n);
            let next_added = added.get(a).map_or(n, |&(at, _)| at);
            let stop = next_removed.min(next_added).clamp(cur, n);
            scratch.extend_from_slice(self.points.get(2 * cur..2 * stop).unwrap_or_default());
            cur = stop;
            if let Some(&(at, p)) = added.get(a)
                && at <= cur
            {
                scratch.push(p.hash);
                scratch.push(u64::from(p.owner) | (u64::from(p.replica) << 32));
                a += 1;
            } else if removed.get(r).is_some_and(|&at| at <= cur) {
                cur += usize::from(removed.get(r) == Some(&cur));
                r += 1;
            } else {
                break;
            }
        }
        let (directory, points) = scratch.split_at_mut(self.directory.len());
        if removed.len() + added.len() > MAX_SHIFTS {
            fill_directory(layout, directory, points);
            return Arc::from(&scratch[..]);
        }
        // Entry k counts the points before it: each point put in below k adds one to
        // it, each taken out below k one less — one add over the words past the
        // point's entry (two entries a word: no carry crosses, as no entry goes below
        // zero nor past 2³²).
        let entries = (1usize << layout.sub_bits) + 1;
        let mut shift = |h: u64, up: bool| {
            let first = layout.entry_of(h) + 1;
            let step = |w: &mut u64, by: u64| {
                *w = if up {
                    w.wrapping_add(by)
                } else {
                    w.wrapping_sub(by)
                }
            };
            let mut word = first / 2;
            if first % 2 == 1 {
                if let Some(w) = directory.get_mut(word) {
                    step(w, 1 << 32);
                }
                word += 1;
            }
            for w in directory.iter_mut().skip(word) {
                step(w, 1 | (1 << 32));
            }
        };
        for p in removed.iter().filter_map(|&i| self.get(i)) {
            shift(p.hash, false);
        }
        for (_, p) in added {
            shift(p.hash, true);
        }
        // The half past the last entry, shifted along: back to zero.
        if entries % 2 == 1
            && let Some(last) = directory.last_mut()
        {
            *last &= u64::from(u32::MAX);
        }
        Arc::from(&scratch[..])
    }
}

/// Every point of a [`Circle`] once, clockwise from a given one.
pub(super) struct Walk<'a> {
    circle: &'a Circle,
    at: At,
    left: usize,
}

impl Iterator for Walk<'_> {
    type Item = Point;

    #[inline]
    fn next(&mut self) -> Option<Point> {
        if self.left == 0 {
            return None;
        }
        // At most one lap of empty pages (the circle holds `left` > 0 points).
        for _ in 0..=self.circle.pages.len() {
            if let Some(p) = self.circle.get(self.at) {
                self.at.1 += 1;
                self.left -= 1;
                return Some(p);
            }
            self.at = ((self.at.0 + 1) % self.circle.pages.len().max(1), 0);
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Walk<'_> {}

/// A page of `points` (sorted, all in one page) under `layout`, written in `scratch`.
fn encode(points: &[Point], layout: Layout, scratch: &mut Vec<u64>) -> Page {
    scratch.clear();
    scratch.resize(layout.directory_words() + 2 * points.len(), 0);
    let (directory, words) = scratch.split_at_mut(layout.directory_words());
    for (w, p) in words.chunks_exact_mut(2).zip(points) {
        w[0] = p.hash;
        w[1] = u64::from(p.owner) | (u64::from(p.replica) << 32);
    }
    fill_directory(layout, directory, words);
    Arc::from(&scratch[..])
}

/// Writes the directory of the page whose point words are `points`: entry k = the
/// first point whose entry is ≥ k, in one pass filling the entries up to each point's.
fn fill_directory(layout: Layout, directory: &mut [u64], points: &[u64]) {
    directory.fill(0);
    let mut set = |k: usize, at: usize| {
        if let Some(w) = directory.get_mut(k / 2) {
            *w |= (at as u64) << (32 * (k % 2));
        }
    };
    let mut k = 0;
    for (i, &hash) in points.iter().step_by(2).enumerate() {
        let entry = layout.entry_of(hash);
        while k <= entry {
            set(k, i);
            k += 1;
        }
    }
    let n = points.len() / 2;
    while k <= 1 << layout.sub_bits {
        set(k, n);
        k += 1;
    }
}

#[inline]
fn decode(hash: u64, owner: u64) -> Point {
    Point {
        hash,
        owner: owner as u32,
        replica: (owner >> 32) as u32,
    }
}

#[cfg(test)]
#[path = "ring_pages_tests.rs"]
mod tests;
