//! Strided matrix views: element `(i, j)` of a `rows × cols` view lives at
//! `data[i·rs + j·cs]`, so a transpose is a swap of strides, never a copy.
//!
//! The fields are private and every constructor checks that the view fits in
//! its slice: the GEMM driver relies on that to index without bounds checks,
//! so a view that reaches past its data cannot be built in safe code.

/// One past the largest offset a `rows × cols` view with these strides touches.
pub(crate) fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

fn check(what: &str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize) {
    // In u128, so that no stride or size can overflow the check itself.
    let need = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) as u128 * rs as u128 + (cols - 1) as u128 * cs as u128 + 1
    };
    assert!(
        need <= len as u128,
        "{what}: a {rows}x{cols} view with strides ({rs}, {cs}) needs {need} values, slice has {len}"
    );
}

/// A read-only strided matrix view; see the module docs.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A mutable strided matrix view; see [`MatRef`].
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// A strided view; panics if it would reach past the end of `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        check("MatRef", data.len(), rows, cols, rs, cs);
        MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A dense row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            Some(data.len()),
            rows.checked_mul(cols),
            "MatRef::row_major: slice has {} values, want {rows}x{cols}",
            data.len()
        );
        MatRef::new(data, rows, cols, cols, 1)
    }

    /// A `rows × cols` view of `data` stored row-major as `(rows, cols)`, or, if
    /// `transposed`, as `(cols, rows)` and read through swapped strides: how a
    /// product's operand arrives either way (`x·W` or `x·Wᵀ`).
    pub fn stored(data: &'a [f32], rows: usize, cols: usize, transposed: bool) -> Self {
        if transposed {
            MatRef::row_major(data, cols, rows).t()
        } else {
            MatRef::row_major(data, rows, cols)
        }
    }

    /// The transpose, by swapping strides (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// The same shape and strides over `data` starting `offset` values later
    /// (item `i` of a batch); panics if it does not fit.
    pub fn shifted(self, offset: usize) -> Self {
        MatRef::new(
            &self.data[offset.min(self.data.len())..],
            self.rows,
            self.cols,
            self.rs,
            self.cs,
        )
    }

    /// Rows `r0 .. r0 + rows` (all columns).
    pub fn rows_range(self, r0: usize, rows: usize) -> Self {
        assert!(
            r0 + rows <= self.rows,
            "MatRef::rows_range: {r0}+{rows} > {}",
            self.rows
        );
        if rows == 0 {
            return MatRef { rows: 0, ..self };
        }
        MatRef::new(&self.data[r0 * self.rs..], rows, self.cols, self.rs, self.cs)
    }

    /// Columns `c0 .. c0 + cols` (all rows).
    pub fn cols_range(self, c0: usize, cols: usize) -> Self {
        self.t().rows_range(c0, cols).t()
    }

    /// Element `(i, j)`.
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }

    /// The underlying slice (from the view's first element on).
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Row stride: the distance between `(i, j)` and `(i+1, j)`.
    pub fn rs(&self) -> usize {
        self.rs
    }
    /// Column stride: the distance between `(i, j)` and `(i, j+1)`.
    pub fn cs(&self) -> usize {
        self.cs
    }
}

impl<'a> MatMut<'a> {
    /// A strided mutable view; panics if it would reach past the end of `data`.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        check("MatMut", data.len(), rows, cols, rs, cs);
        MatMut {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A dense row-major `rows × cols` matrix.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            Some(data.len()),
            rows.checked_mul(cols),
            "MatMut::row_major: slice has {} values, want {rows}x{cols}",
            data.len()
        );
        MatMut::new(data, rows, cols, cols, 1)
    }

    /// The transpose, by swapping strides (no copy).
    pub fn t(self) -> Self {
        MatMut {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Reborrows as a read-only view.
    pub fn as_ref(&self) -> MatRef<'_> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }

    /// Reborrows the same shape over `data` starting `offset` values later;
    /// panics if it does not fit.
    pub fn shifted(&mut self, offset: usize) -> MatMut<'_> {
        let start = offset.min(self.data.len());
        MatMut::new(&mut self.data[start..], self.rows, self.cols, self.rs, self.cs)
    }

    /// Element `(i, j)`, mutably.
    #[inline]
    pub fn at_mut(&mut self, i: usize, j: usize) -> &mut f32 {
        &mut self.data[i * self.rs + j * self.cs]
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn rs(&self) -> usize {
        self.rs
    }
    pub fn cs(&self) -> usize {
        self.cs
    }

    /// The first element's address, for writers that split the view among
    /// threads (the driver); the view's bounds were checked at construction.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        self.data.as_mut_ptr()
    }

    /// True if no two elements share an offset (the only layouts written in
    /// parallel): rows laid out one after another, or columns.
    pub(crate) fn is_non_overlapping(&self) -> bool {
        self.rows <= 1
            || self.cols <= 1
            || (self.cs >= 1 && self.rs >= self.cols * self.cs)
            || (self.rs >= 1 && self.cs >= self.rows * self.rs)
    }
}
