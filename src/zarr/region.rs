//! Hyper-rectangles of C-order arrays: copying and filling the part two boxes share.

/// Calls `row(start)` for every row (a run along the last dimension) of the box `lo..hi`,
/// with `start` the multi-index of the row's first element. A 0-d box has one row.
fn for_each_row(lo: &[u64], hi: &[u64], mut row: impl FnMut(&[u64])) {
    let n = lo.len();
    if lo.iter().zip(hi).any(|(l, h)| l >= h) {
        return;
    }
    let mut index = lo.to_vec();
    loop {
        row(&index);
        // Advance every dimension but the last, like an odometer.
        let mut d = n.saturating_sub(1);
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < hi[d] {
                break;
            }
            index[d] = lo[d];
        }
    }
}

/// The linear offset of `index` in a C-order box at `origin` of `shape`.
fn offset(index: &[u64], origin: &[u64], shape: &[u64]) -> usize {
    let mut off = 0u64;
    for ((i, o), s) in index.iter().zip(origin).zip(shape) {
        off = off * s + (i - o);
    }
    off as usize
}

/// The intersection of two boxes, `None` when empty.
pub(crate) fn intersect(
    a_origin: &[u64],
    a_shape: &[u64],
    b_origin: &[u64],
    b_shape: &[u64],
) -> Option<(Vec<u64>, Vec<u64>)> {
    let lo: Vec<u64> = a_origin
        .iter()
        .zip(b_origin)
        .map(|(a, b)| *a.max(b))
        .collect();
    let hi: Vec<u64> = (0..lo.len())
        .map(|d| {
            // A chunk at the very end of a huge array must not overflow.
            a_origin[d]
                .saturating_add(a_shape[d])
                .min(b_origin[d].saturating_add(b_shape[d]))
        })
        .collect();
    if lo.iter().zip(&hi).any(|(l, h)| l >= h) {
        return None;
    }
    Some((lo, hi))
}

/// Copies the part of `src` (a box at `src_origin` of `src_shape`) that lies inside `dst`
/// (a box at `dst_origin` of `dst_shape`).
pub(crate) fn copy_box<T: Copy>(
    src: &[T],
    src_origin: &[u64],
    src_shape: &[u64],
    dst: &mut [T],
    dst_origin: &[u64],
    dst_shape: &[u64],
) {
    let Some((lo, hi)) = intersect(src_origin, src_shape, dst_origin, dst_shape) else {
        return;
    };
    let run = lo.last().map_or(1, |l| (hi[hi.len() - 1] - l) as usize);
    for_each_row(&lo, &hi, |start| {
        let s = offset(start, src_origin, src_shape);
        let d = offset(start, dst_origin, dst_shape);
        dst[d..d + run].copy_from_slice(&src[s..s + run]);
    });
}

/// Sets the part of `dst` (a box at `dst_origin` of `dst_shape`) inside the box at `origin`
/// of `shape` to `value`.
pub(crate) fn fill_box<T: Copy>(
    dst: &mut [T],
    dst_origin: &[u64],
    dst_shape: &[u64],
    origin: &[u64],
    shape: &[u64],
    value: T,
) {
    let Some((lo, hi)) = intersect(origin, shape, dst_origin, dst_shape) else {
        return;
    };
    let run = lo.last().map_or(1, |l| (hi[hi.len() - 1] - l) as usize);
    for_each_row(&lo, &hi, |start| {
        let d = offset(start, dst_origin, dst_shape);
        dst[d..d + run].fill(value);
    });
}

/// Every multi-index of the box `lo..hi` (all dimensions), in C order.
pub(crate) fn indices(lo: &[u64], hi: &[u64]) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    let n = lo.len();
    if n == 0 {
        out.push(Vec::new());
        return out;
    }
    let last = n - 1;
    for_each_row(lo, hi, |start| {
        for i in lo[last]..hi[last] {
            let mut index = start.to_vec();
            index[last] = i;
            out.push(index);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_box_copies_only_the_overlap() {
        // A 4x4 source at (2, 2) into a 5x5 destination at (0, 0): the overlap is (2..5, 2..5).
        let src: Vec<u32> = (0..16).collect();
        let mut dst = vec![99u32; 25];
        copy_box(&src, &[2, 2], &[4, 4], &mut dst, &[0, 0], &[5, 5]);
        for r in 0..5u64 {
            for c in 0..5u64 {
                let got = dst[(r * 5 + c) as usize];
                let want = if r >= 2 && c >= 2 {
                    ((r - 2) * 4 + (c - 2)) as u32
                } else {
                    99
                };
                assert_eq!(got, want, "({r}, {c})");
            }
        }
        let mut dst = vec![0u8; 6];
        fill_box(&mut dst, &[10], &[6], &[12], &[100], 7);
        assert_eq!(dst, [0, 0, 7, 7, 7, 7]);
        let mut scalar = vec![0u8];
        copy_box(&[5u8], &[], &[], &mut scalar, &[], &[]);
        assert_eq!(scalar, [5]);
        assert_eq!(indices(&[0, 1], &[2, 3]).len(), 4);
        assert_eq!(indices(&[], &[]), vec![Vec::<u64>::new()]);
    }
}
