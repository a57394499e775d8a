//! The training step's graph, written once and run twice: by candle on real tensors (the
//! runner's `CandleOps`) and by [`super::candle_train`]'s simulator on shapes alone, which
//! replays candle's allocations, tensor lifetimes and autograd to predict the peaks.
//!
//! candle-transformers' llama cannot be trained: its RMSNorm, softmax and rotary embedding
//! are fused custom ops without a backward pass, and it returns last-token logits only. This
//! is the same Llama (same parameter names and shapes, same arithmetic) built from candle's
//! differentiable primitives, the way candle-nn composes them in `rms_norm_slow`,
//! `rotary_emb::rope_slow`, `ops::softmax`, `ops::log_softmax` and `loss::cross_entropy`:
//! logits for every position, the mean next-token cross-entropy as the loss.
//!
//! LoRA (PEFT's formulation): `y = x W^T + scale * (x A^T) B^T` on the targeted projections,
//! `A` of shape (rank, in), `B` of shape (out, rank), the base weights frozen.

/// The tensor operations the graph uses, with candle's semantics: shapes are row-major, a
/// binary operation broadcasts only the operand whose shape differs, views share storage.
pub trait Ops {
    type T: Clone;
    type E;
    fn dims(&self, x: &Self::T) -> Vec<usize>;
    fn reshape(&self, x: &Self::T, shape: &[usize]) -> Result<Self::T, Self::E>;
    fn transpose(&self, x: &Self::T, d1: usize, d2: usize) -> Result<Self::T, Self::E>;
    fn contiguous(&self, x: &Self::T) -> Result<Self::T, Self::E>;
    fn matmul(&self, a: &Self::T, b: &Self::T) -> Result<Self::T, Self::E>;
    fn add(&self, a: &Self::T, b: &Self::T) -> Result<Self::T, Self::E>;
    fn sub(&self, a: &Self::T, b: &Self::T) -> Result<Self::T, Self::E>;
    fn mul(&self, a: &Self::T, b: &Self::T) -> Result<Self::T, Self::E>;
    fn div(&self, a: &Self::T, b: &Self::T) -> Result<Self::T, Self::E>;
    fn affine(&self, x: &Self::T, mul: f64, add: f64) -> Result<Self::T, Self::E>;
    fn sqr(&self, x: &Self::T) -> Result<Self::T, Self::E>;
    fn sqrt(&self, x: &Self::T) -> Result<Self::T, Self::E>;
    fn exp(&self, x: &Self::T) -> Result<Self::T, Self::E>;
    fn log(&self, x: &Self::T) -> Result<Self::T, Self::E>;
    fn neg(&self, x: &Self::T) -> Result<Self::T, Self::E>;
    fn silu(&self, x: &Self::T) -> Result<Self::T, Self::E>;
    /// Sum over the last dimension, kept (size 1).
    fn sum_keepdim_last(&self, x: &Self::T) -> Result<Self::T, Self::E>;
    /// Max over the last dimension, kept (size 1).
    fn max_keepdim_last(&self, x: &Self::T) -> Result<Self::T, Self::E>;
    fn narrow(&self, x: &Self::T, dim: usize, start: usize, len: usize)
        -> Result<Self::T, Self::E>;
    fn cat(&self, xs: &[&Self::T], dim: usize) -> Result<Self::T, Self::E>;
    /// Rows of `w` picked by the u32 `ids` (an embedding lookup).
    fn index_select0(&self, w: &Self::T, ids: &Self::T) -> Result<Self::T, Self::E>;
    /// `x.gather(ids, last dim)`.
    fn gather_last(&self, x: &Self::T, ids: &Self::T) -> Result<Self::T, Self::E>;
    fn sum_all(&self, x: &Self::T) -> Result<Self::T, Self::E>;
    /// Cast to f32 (`f32 == true`) or back to the model's dtype; a no-op when it is already.
    fn cast(&self, x: &Self::T, f32: bool) -> Result<Self::T, Self::E>;
}

/// A linear layer's weight, `(out, in)`, and its LoRA adapter if it has one.
#[derive(Clone)]
pub struct Linear<T> {
    pub w: T,
    /// `(A: (rank, in), B: (out, rank), scale = alpha / rank)`.
    pub lora: Option<(T, T, f64)>,
}

/// One decoder layer's parameters.
#[derive(Clone)]
pub struct Layer<T> {
    pub input_layernorm: T,
    pub q: Linear<T>,
    pub k: Linear<T>,
    pub v: Linear<T>,
    pub o: Linear<T>,
    pub post_attention_layernorm: T,
    pub gate: Linear<T>,
    pub up: Linear<T>,
    pub down: Linear<T>,
}

/// Every parameter of the model.
#[derive(Clone)]
pub struct Params<T> {
    pub embed: T,
    pub layers: Vec<Layer<T>>,
    pub norm: T,
    pub lm_head: Linear<T>,
}

/// The step's constant inputs.
pub struct Inputs<T> {
    /// u32 token ids, `(batch * seq)`.
    pub ids: T,
    /// u32 next-token targets, `(batch * seq, 1)`.
    pub targets: T,
    /// Rotary tables `(seq, head_dim)` (the halves already concatenated), model dtype.
    pub cos: T,
    pub sin: T,
    /// Additive causal mask `(seq, seq)`: 0 on and below the diagonal, -inf above.
    pub mask: T,
}

/// The sizes the graph needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dims {
    pub batch: usize,
    pub seq: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
}

fn linear<O: Ops>(o: &O, x: &O::T, l: &Linear<O::T>) -> Result<O::T, O::E> {
    let y = o.matmul(x, &o.transpose(&l.w, 0, 1)?)?;
    match &l.lora {
        None => Ok(y),
        Some((a, b, scale)) => {
            let xa = o.matmul(x, &o.transpose(a, 0, 1)?)?;
            let xab = o.matmul(&xa, &o.transpose(b, 0, 1)?)?;
            o.add(&y, &o.affine(&xab, *scale, 0.)?)
        }
    }
}

/// candle-nn's `rms_norm_slow`: in f32, then back to the model dtype, times the weight.
fn rms_norm<O: Ops>(o: &O, x: &O::T, w: &O::T, d: &Dims) -> Result<O::T, O::E> {
    let x32 = o.cast(x, true)?;
    let norm = o.affine(
        &o.sum_keepdim_last(&o.sqr(&x32)?)?,
        1. / d.hidden as f64,
        0.,
    )?;
    let denom = o.sqrt(&o.affine(&norm, 1., d.eps)?)?;
    let xn = o.div(&x32, &denom)?;
    o.mul(&o.cast(&xn, false)?, w)
}

/// candle-nn's `rope_slow` on `(b, heads, seq, head_dim)`.
fn rope<O: Ops>(o: &O, x: &O::T, i: &Inputs<O::T>, d: &Dims) -> Result<O::T, O::E> {
    let half = d.head_dim / 2;
    let x1 = o.narrow(x, 3, 0, half)?;
    let x2 = o.narrow(x, 3, half, d.head_dim - half)?;
    let rotated = o.cat(&[&o.neg(&x2)?, &x1], 3)?;
    o.add(&o.mul(x, &i.cos)?, &o.mul(&rotated, &i.sin)?)
}

/// candle-nn's `ops::softmax` over the last dimension.
fn softmax<O: Ops>(o: &O, x: &O::T) -> Result<O::T, O::E> {
    let max = o.max_keepdim_last(x)?;
    let diff = o.sub(x, &max)?;
    let num = o.exp(&diff)?;
    let den = o.sum_keepdim_last(&num)?;
    o.div(&num, &den)
}

/// `(b*s, width)` -> `(b, heads, s, head_dim)`, contiguous.
fn heads<O: Ops>(o: &O, x: &O::T, n: usize, d: &Dims) -> Result<O::T, O::E> {
    let x = o.reshape(x, &[d.batch, d.seq, n, d.head_dim])?;
    o.contiguous(&o.transpose(&x, 1, 2)?)
}

fn block<O: Ops>(
    o: &O,
    x: &O::T,
    l: &Layer<O::T>,
    i: &Inputs<O::T>,
    d: &Dims,
) -> Result<O::T, O::E> {
    let (b, s) = (d.batch, d.seq);
    let xn = rms_norm(o, x, &l.input_layernorm, d)?;
    let q = heads(o, &linear(o, &xn, &l.q)?, d.heads, d)?;
    let k = heads(o, &linear(o, &xn, &l.k)?, d.kv_heads, d)?;
    let v = heads(o, &linear(o, &xn, &l.v)?, d.kv_heads, d)?;
    let q = rope(o, &q, i, d)?;
    let k = rope(o, &k, i, d)?;
    // candle-transformers' `utils::repeat_kv`: cat along the sequence, then reshape.
    let n_rep = d.heads / d.kv_heads;
    let (k, v) = if n_rep > 1 {
        let ks: Vec<&O::T> = std::iter::repeat_n(&k, n_rep).collect();
        let vs: Vec<&O::T> = std::iter::repeat_n(&v, n_rep).collect();
        let shape = [b, d.heads, s, d.head_dim];
        (
            o.reshape(&o.cat(&ks, 2)?, &shape)?,
            o.reshape(&o.cat(&vs, 2)?, &shape)?,
        )
    } else {
        (k, v)
    };
    let q = o.affine(&q, 1. / (d.head_dim as f64).sqrt(), 0.)?;
    let att = o.matmul(&q, &o.transpose(&k, 2, 3)?)?;
    let att = softmax(o, &o.add(&att, &i.mask)?)?;
    let y = o.matmul(&att, &v)?;
    let y = o.reshape(&o.transpose(&y, 1, 2)?, &[b * s, d.heads * d.head_dim])?;
    let x = o.add(x, &linear(o, &y, &l.o)?)?;
    let xn = rms_norm(o, &x, &l.post_attention_layernorm, d)?;
    let act = o.silu(&linear(o, &xn, &l.gate)?)?;
    let mlp = linear(o, &o.mul(&act, &linear(o, &xn, &l.up)?)?, &l.down)?;
    o.add(&x, &mlp)
}

/// The mean next-token cross-entropy of the batch (a scalar), every position's logits in f32.
pub fn loss<O: Ops>(o: &O, p: &Params<O::T>, i: &Inputs<O::T>, d: &Dims) -> Result<O::T, O::E> {
    let mut x = o.index_select0(&p.embed, &i.ids)?;
    for l in &p.layers {
        x = block(o, &x, l, i, d)?;
    }
    let x = rms_norm(o, &x, &p.norm, d)?;
    let logits = o.cast(&linear(o, &x, &p.lm_head)?, true)?;
    // candle-nn's log_softmax, then nll: -mean of the targets' log-probabilities.
    let max = o.max_keepdim_last(&logits)?;
    let diff = o.sub(&logits, &max)?;
    let lse = o.log(&o.sum_keepdim_last(&o.exp(&diff)?)?)?;
    let logp = o.sub(&diff, &lse)?;
    let picked = o.gather_last(&logp, &i.targets)?;
    o.affine(&o.sum_all(&picked)?, -1. / (d.batch * d.seq) as f64, 0.)
}
