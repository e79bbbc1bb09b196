//! Row-major float32 matrices and their float64 (faer) counterparts.

use faer::{Mat, MatRef};

use super::LinalgError;

/// A borrowed row-major float32 matrix: entry `(i, j)` is `data[i * cols + j]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatF32Ref<'a> {
    rows: usize,
    cols: usize,
    /// (rows, cols), row-major
    data: &'a [f32],
}

impl<'a> MatF32Ref<'a> {
    /// Views `data` as a `rows x cols` row-major matrix.
    ///
    /// `what` names the operand in the error when `data.len() != rows * cols`.
    pub fn new(what: &'static str, data: &'a [f32], rows: usize, cols: usize) -> Result<Self, LinalgError> {
        let expected = rows
            .checked_mul(cols)
            .ok_or(LinalgError::ShapeOverflow { what, rows, cols })?;
        if data.len() != expected {
            return Err(LinalgError::ShapeMismatch {
                what,
                rows,
                cols,
                expected,
                got: data.len(),
            });
        }
        Ok(Self { rows, cols, data })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The entries, row-major: (rows, cols).
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Entry `(i, j)`; panics when out of range (like slice indexing).
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.cols + j]
    }
}

/// An owned row-major float32 matrix: entry `(i, j)` is `data()[i * cols + j]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MatF32 {
    rows: usize,
    cols: usize,
    /// (rows, cols), row-major
    data: Vec<f32>,
}

impl MatF32 {
    /// Wraps `data` as a `rows x cols` row-major matrix.
    pub fn new(what: &'static str, data: Vec<f32>, rows: usize, cols: usize) -> Result<Self, LinalgError> {
        MatF32Ref::new(what, &data, rows, cols)?;
        Ok(Self { rows, cols, data })
    }

    /// The `n x n` identity.
    pub fn identity(n: usize) -> Self {
        let mut data = vec![0.0; n * n];
        for i in 0..n {
            data[i * n + i] = 1.0;
        }
        Self { rows: n, cols: n, data }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The entries, row-major: (rows, cols).
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The entries, row-major and mutable: (rows, cols).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Gives up the matrix and returns its row-major entries.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Entry `(i, j)`; panics when out of range (like slice indexing).
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.cols + j]
    }

    /// A borrowed view.
    pub fn view(&self) -> MatF32Ref<'_> {
        MatF32Ref {
            rows: self.rows,
            cols: self.cols,
            data: &self.data,
        }
    }

    /// Rounds a float64 matrix to float32, once per entry.
    pub(crate) fn round_from(m: MatRef<'_, f64>) -> Self {
        let (rows, cols) = (m.nrows(), m.ncols());
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(m[(i, j)] as f32);
            }
        }
        Self { rows, cols, data }
    }
}

/// Widens a float32 matrix to float64 (exact).
pub(crate) fn to_f64(m: MatF32Ref<'_>) -> Mat<f64> {
    Mat::from_fn(m.rows, m.cols, |i, j| f64::from(m.data[i * m.cols + j]))
}

/// Checks that `m` is `rows x cols`.
pub(crate) fn expect_dims(what: &'static str, m: MatF32Ref<'_>, rows: usize, cols: usize) -> Result<(), LinalgError> {
    if m.rows != rows || m.cols != cols {
        return Err(LinalgError::DimMismatch {
            what,
            expected_rows: rows,
            expected_cols: cols,
            rows: m.rows,
            cols: m.cols,
        });
    }
    Ok(())
}

/// Checks that `m` has at least one row and one column and only finite entries.
pub(crate) fn expect_finite_nonempty(what: &'static str, m: MatF32Ref<'_>) -> Result<(), LinalgError> {
    if m.rows == 0 || m.cols == 0 {
        return Err(LinalgError::Empty {
            what,
            rows: m.rows,
            cols: m.cols,
        });
    }
    if let Some(idx) = m.data.iter().position(|x| !x.is_finite()) {
        return Err(LinalgError::NonFinite {
            what,
            row: idx / m.cols,
            col: idx % m.cols,
            value: m.data[idx],
        });
    }
    Ok(())
}
