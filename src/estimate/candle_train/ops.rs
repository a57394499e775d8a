//! The training graph's [`Ops`] on the simulator: each op as candle 0.11 performs it
//! (which copies, which views, which dtype conversions).

use super::sim::{is_contiguous, Binary, Op, Sim, SimResult, SimTensor, Unary};
use crate::estimate::train_graph::Ops;
use std::convert::Infallible;

impl Ops for Sim {
    type T = SimTensor;
    type E = Infallible;

    fn dims(&self, x: &SimTensor) -> Vec<usize> {
        self.shape(x)
    }
    fn reshape(&self, x: &SimTensor, shape: &[usize]) -> SimResult {
        Ok(self.reshape_h(x, shape))
    }
    fn transpose(&self, x: &SimTensor, d1: usize, d2: usize) -> SimResult {
        Ok(self.transpose_h(x, d1, d2))
    }
    fn contiguous(&self, x: &SimTensor) -> SimResult {
        let mut s = self.inner.borrow_mut();
        let n = &s.nodes[x.id];
        if is_contiguous(&n.shape, &n.stride) {
            s.nodes[x.id].refs += 1;
            drop(s);
            return Ok(self.h(x.id));
        }
        let (shape, e) = (n.shape.clone(), n.esize);
        let id = s.fresh(shape, e, Some(Op::Copy(x.id)));
        drop(s);
        Ok(self.h(id))
    }
    fn matmul(&self, a: &SimTensor, b: &SimTensor) -> SimResult {
        Ok(self.matmul_h(a, b))
    }
    fn add(&self, a: &SimTensor, b: &SimTensor) -> SimResult {
        Ok(self.binary(a, b, Binary::Add))
    }
    fn sub(&self, a: &SimTensor, b: &SimTensor) -> SimResult {
        Ok(self.binary(a, b, Binary::Sub))
    }
    fn mul(&self, a: &SimTensor, b: &SimTensor) -> SimResult {
        Ok(self.binary(a, b, Binary::Mul))
    }
    fn div(&self, a: &SimTensor, b: &SimTensor) -> SimResult {
        Ok(self.binary(a, b, Binary::Div))
    }
    fn affine(&self, x: &SimTensor, mul: f64, _add: f64) -> SimResult {
        Ok(self.affine_h(x, mul))
    }
    fn sqr(&self, x: &SimTensor) -> SimResult {
        Ok(self.unary(x, Unary::Sqr))
    }
    fn sqrt(&self, x: &SimTensor) -> SimResult {
        Ok(self.unary(x, Unary::Sqrt))
    }
    fn exp(&self, x: &SimTensor) -> SimResult {
        Ok(self.unary(x, Unary::Exp))
    }
    fn log(&self, x: &SimTensor) -> SimResult {
        Ok(self.unary(x, Unary::Log))
    }
    fn neg(&self, x: &SimTensor) -> SimResult {
        Ok(self.unary(x, Unary::Neg))
    }
    fn silu(&self, x: &SimTensor) -> SimResult {
        Ok(self.unary(x, Unary::Silu))
    }
    fn sum_keepdim_last(&self, x: &SimTensor) -> SimResult {
        let r = self.shape(x).len();
        Ok(self.sum_keepdims(x, &[r - 1]))
    }
    fn max_keepdim_last(&self, x: &SimTensor) -> SimResult {
        let mut shape = self.shape(x);
        let r = shape.len();
        shape[r - 1] = 1;
        let mut s = self.inner.borrow_mut();
        let e = s.nodes[x.id].esize;
        let id = s.fresh(shape, e, Some(Op::Max(x.id)));
        drop(s);
        Ok(self.h(id))
    }
    fn narrow(&self, x: &SimTensor, dim: usize, start: usize, len: usize) -> SimResult {
        Ok(self.narrow_h(x, dim, start, len))
    }
    fn cat(&self, xs: &[&SimTensor], dim: usize) -> SimResult {
        Ok(self.cat_h(xs, dim))
    }
    fn index_select0(&self, w: &SimTensor, ids: &SimTensor) -> SimResult {
        let n = self.shape(ids)[0];
        let width = self.shape(w)[1];
        let mut s = self.inner.borrow_mut();
        let e = s.nodes[w.id].esize;
        let id = s.fresh(vec![n, width], e, Some(Op::IndexSelect(w.id, ids.id)));
        drop(s);
        Ok(self.h(id))
    }
    fn gather_last(&self, x: &SimTensor, ids: &SimTensor) -> SimResult {
        let shape = self.shape(ids);
        let mut s = self.inner.borrow_mut();
        let e = s.nodes[x.id].esize;
        let id = s.fresh(shape, e, Some(Op::Gather(x.id, ids.id)));
        drop(s);
        Ok(self.h(id))
    }
    fn sum_all(&self, x: &SimTensor) -> SimResult {
        let r = self.shape(x).len();
        let dims: Vec<usize> = (0..r).collect();
        let sum = self.sum_keepdims(x, &dims);
        // squeeze_dims of several dims: a reshape to a scalar (a view).
        Ok(self.reshape_h(&sum, &[]))
    }
    fn cast(&self, x: &SimTensor, f32: bool) -> SimResult {
        let e = if f32 {
            4
        } else {
            self.inner.borrow().model_esize
        };
        Ok(self.to_esize(x, e))
    }
}
