//! The kernels lamdac fuses, and those the CUDA backend runs for unfused ops
//! (`codegen::cuda::unfused_kernel`), as kernel IR. Each constructor documents its
//! arguments in order; the math matches the unfused CPU ops (runtime/src/ops)
//! up to float rounding (tests compare the two).

use super::{Access, Arg, ArgTy, Col, Cond, Expr, Kernel, Reduce, Stmt};

fn arg(name: &str, ty: ArgTy, access: Access) -> Arg {
    Arg {
        name: name.to_string(),
        ty,
        access,
    }
}

fn rows(cols: usize) -> ArgTy {
    ArgTy::Rows { cols }
}

/// RMSNorm forward: `rstd = 1 / sqrt(mean(x^2) + eps)`, `y = w * (x * rstd)`.
/// Args: x (R, rows d), w (R, vector d), y (W, rows d), rstd (W, per row).
pub fn rmsnorm(d: usize, eps: f64) -> Kernel {
    Kernel {
        name: format!("rmsnorm_d{d}_eps{eps:e}"),
        args: vec![
            arg("x", rows(d), Access::Read),
            arg("w", ArgTy::Vector { len: d }, Access::Read),
            arg("y", rows(d), Access::Write),
            arg("rstd", ArgTy::PerRow, Access::Write),
        ],
        body: vec![
            Stmt::Reduce {
                var: 0,
                op: Reduce::Sum,
                cols: d,
                value: Expr::load(0) * Expr::load(0),
            },
            Stmt::Let {
                var: 1,
                value: (Expr::var(0) / Expr::c(d as f64) + Expr::c(eps)).rsqrt(),
            },
            Stmt::StoreRow {
                arg: 3,
                value: Expr::var(1),
            },
            Stmt::Store {
                arg: 2,
                cols: d,
                value: Expr::load(1) * (Expr::load(0) * Expr::var(1)),
                accumulate: false,
            },
        ],
    }
}

/// RMSNorm backward (weight frozen): with `r = rstd`, `c = sum_j g_j w_j x_j`,
/// `dx = r (g w) - x r^3 c / d`.
/// Args: g (R, rows d), x (R, rows d), w (R, vector d), rstd (R, per row), dx (W, rows d).
pub fn rmsnorm_grad(d: usize) -> Kernel {
    let gw = || Expr::load(0) * Expr::load(2);
    Kernel {
        name: format!("rmsnorm_grad_d{d}"),
        args: vec![
            arg("g", rows(d), Access::Read),
            arg("x", rows(d), Access::Read),
            arg("w", ArgTy::Vector { len: d }, Access::Read),
            arg("rstd", ArgTy::PerRow, Access::Read),
            arg("dx", rows(d), Access::Write),
        ],
        body: vec![
            Stmt::Reduce {
                var: 0,
                op: Reduce::Sum,
                cols: d,
                value: gw() * Expr::load(1),
            },
            Stmt::Let {
                var: 1,
                value: Expr::load(3),
            },
            Stmt::Let {
                var: 2,
                value: Expr::var(1) * Expr::var(1) * Expr::var(1) * Expr::c(1.0 / d as f64) * Expr::var(0),
            },
            Stmt::Store {
                arg: 4,
                cols: d,
                value: Expr::var(1) * gw() - Expr::load(1) * Expr::var(2),
                accumulate: false,
            },
        ],
    }
}

/// LayerNorm forward (torch.nn.LayerNorm: biased variance, two passes):
/// `mean = sum(x) / d`, `var = sum((x - mean)^2) / d`, `rstd = 1 / sqrt(var + eps)`,
/// `y = (x - mean) * rstd * w + b`.
/// Args: x (R, rows d), w (R, vector d), b (R, vector d), y (W, rows d),
/// mean (W, per row), rstd (W, per row).
pub fn layernorm(d: usize, eps: f64) -> Kernel {
    let xc = || Expr::load(0) - Expr::var(1);
    Kernel {
        name: format!("layernorm_d{d}_eps{eps:e}"),
        args: vec![
            arg("x", rows(d), Access::Read),
            arg("w", ArgTy::Vector { len: d }, Access::Read),
            arg("b", ArgTy::Vector { len: d }, Access::Read),
            arg("y", rows(d), Access::Write),
            arg("mean", ArgTy::PerRow, Access::Write),
            arg("rstd", ArgTy::PerRow, Access::Write),
        ],
        body: vec![
            Stmt::Reduce {
                var: 0,
                op: Reduce::Sum,
                cols: d,
                value: Expr::load(0),
            },
            Stmt::Let {
                var: 1,
                value: Expr::var(0) / Expr::c(d as f64),
            },
            Stmt::Reduce {
                var: 2,
                op: Reduce::Sum,
                cols: d,
                value: xc() * xc(),
            },
            Stmt::Let {
                var: 3,
                value: (Expr::var(2) / Expr::c(d as f64) + Expr::c(eps)).rsqrt(),
            },
            Stmt::StoreRow {
                arg: 4,
                value: Expr::var(1),
            },
            Stmt::StoreRow {
                arg: 5,
                value: Expr::var(3),
            },
            Stmt::Store {
                arg: 3,
                cols: d,
                value: xc() * Expr::var(3) * Expr::load(1) + Expr::load(2),
                accumulate: false,
            },
        ],
    }
}

/// LayerNorm backward (weight and bias frozen): with `xhat = (x - mean) rstd`
/// and `gw = g w`, `dx = rstd (gw - mean_j(gw) - xhat mean_j(gw xhat))`.
/// Args: g (R, rows d), x (R, rows d), w (R, vector d), mean (R, per row),
/// rstd (R, per row), dx (W, rows d).
pub fn layernorm_grad(d: usize) -> Kernel {
    let gw = || Expr::load(0) * Expr::load(2);
    let xhat = || (Expr::load(1) - Expr::var(0)) * Expr::var(1);
    Kernel {
        name: format!("layernorm_grad_d{d}"),
        args: vec![
            arg("g", rows(d), Access::Read),
            arg("x", rows(d), Access::Read),
            arg("w", ArgTy::Vector { len: d }, Access::Read),
            arg("mean", ArgTy::PerRow, Access::Read),
            arg("rstd", ArgTy::PerRow, Access::Read),
            arg("dx", rows(d), Access::Write),
        ],
        body: vec![
            Stmt::Let {
                var: 0,
                value: Expr::load(3),
            },
            Stmt::Let {
                var: 1,
                value: Expr::load(4),
            },
            Stmt::Reduce {
                var: 2,
                op: Reduce::Sum,
                cols: d,
                value: gw(),
            },
            Stmt::Reduce {
                var: 3,
                op: Reduce::Sum,
                cols: d,
                value: gw() * xhat(),
            },
            Stmt::Let {
                var: 4,
                value: Expr::var(2) / Expr::c(d as f64),
            },
            Stmt::Let {
                var: 5,
                value: Expr::var(3) / Expr::c(d as f64),
            },
            Stmt::Store {
                arg: 5,
                cols: d,
                value: Expr::var(1) * (gw() - Expr::var(4) - xhat() * Expr::var(5)),
                accumulate: false,
            },
        ],
    }
}

/// The standard normal CDF `Phi(x) = 0.5 (1 + erf(x / sqrt 2))`.
fn normal_cdf(x: Expr) -> Expr {
    Expr::c(0.5) * (Expr::c(1.0) + (x * Expr::c(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// GELU forward, the exact (erf) form of BERT and torch's default: `y = x Phi(x)`,
/// `Phi(x) = 0.5 (1 + erf(x / sqrt 2))`.
/// Args: x (R, rows d), y (W, rows d).
pub fn gelu(d: usize) -> Kernel {
    Kernel {
        name: format!("gelu_d{d}"),
        args: vec![arg("x", rows(d), Access::Read), arg("y", rows(d), Access::Write)],
        body: vec![Stmt::Store {
            arg: 1,
            cols: d,
            value: Expr::load(0) * normal_cdf(Expr::load(0)),
            accumulate: false,
        }],
    }
}

/// GELU backward: `dx = g (Phi(x) + x exp(-x^2 / 2) / sqrt(2 pi))`.
/// Args: g (R, rows d), x (R, rows d), dx (W, rows d).
pub fn gelu_grad(d: usize) -> Kernel {
    let x = || Expr::load(1);
    // 1 / sqrt(2 pi)
    let inv_sqrt_2pi = std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2 * 0.5;
    let pdf = (x() * x() * Expr::c(-0.5)).exp() * Expr::c(inv_sqrt_2pi);
    Kernel {
        name: format!("gelu_grad_d{d}"),
        args: vec![
            arg("g", rows(d), Access::Read),
            arg("x", rows(d), Access::Read),
            arg("dx", rows(d), Access::Write),
        ],
        body: vec![Stmt::Store {
            arg: 2,
            cols: d,
            value: Expr::load(0) * (normal_cdf(x()) + x() * pdf),
            accumulate: false,
        }],
    }
}

/// tanh forward (the BERT pooler's activation): `y = tanh(x)`.
/// Args: x (R, rows d), y (W, rows d).
pub fn tanh(d: usize) -> Kernel {
    Kernel {
        name: format!("tanh_d{d}"),
        args: vec![arg("x", rows(d), Access::Read), arg("y", rows(d), Access::Write)],
        body: vec![Stmt::Store {
            arg: 1,
            cols: d,
            value: Expr::load(0).tanh(),
            accumulate: false,
        }],
    }
}

/// tanh backward from the forward output: `dx = g (1 - y^2)`.
/// Args: g (R, rows d), y (R, rows d: the forward's output), dx (W, rows d).
pub fn tanh_grad(d: usize) -> Kernel {
    Kernel {
        name: format!("tanh_grad_d{d}"),
        args: vec![
            arg("g", rows(d), Access::Read),
            arg("y", rows(d), Access::Read),
            arg("dx", rows(d), Access::Write),
        ],
        body: vec![Stmt::Store {
            arg: 2,
            cols: d,
            value: Expr::load(0) * (Expr::c(1.0) - Expr::load(1) * Expr::load(1)),
            accumulate: false,
        }],
    }
}

/// A bias broadcast over rows: `y = x + b`.
/// Args: x (R, rows d), b (R, vector d), y (W, rows d).
pub fn bias_add(d: usize) -> Kernel {
    Kernel {
        name: format!("bias_add_d{d}"),
        args: vec![
            arg("x", rows(d), Access::Read),
            arg("b", ArgTy::Vector { len: d }, Access::Read),
            arg("y", rows(d), Access::Write),
        ],
        body: vec![Stmt::Store {
            arg: 2,
            cols: d,
            value: Expr::load(0) + Expr::load(1),
            accumulate: false,
        }],
    }
}

fn sigmoid(x: Expr) -> Expr {
    (Expr::c(1.0) + (-x).exp()).recip()
}

/// SwiGLU forward: `h = silu(gate) * up`, `silu(x) = x / (1 + exp(-x))`.
/// Args: gate (R, rows f), up (R, rows f), h (W, rows f).
pub fn swiglu(f: usize) -> Kernel {
    Kernel {
        name: format!("swiglu_f{f}"),
        args: vec![
            arg("gate", rows(f), Access::Read),
            arg("up", rows(f), Access::Read),
            arg("h", rows(f), Access::Write),
        ],
        body: vec![Stmt::Store {
            arg: 2,
            cols: f,
            value: Expr::load(0) / (Expr::c(1.0) + (-Expr::load(0)).exp()) * Expr::load(1),
            accumulate: false,
        }],
    }
}

/// SwiGLU backward: with `s = sigmoid(gate)`, `dgate = dh up s (1 + gate (1 - s))`, `dup = dh silu(gate)`.
/// Args: gate (R), up (R), dh (R), dgate (W), dup (W), all rows f.
pub fn swiglu_grad(f: usize) -> Kernel {
    let s = || sigmoid(Expr::load(0));
    Kernel {
        name: format!("swiglu_grad_f{f}"),
        args: vec![
            arg("gate", rows(f), Access::Read),
            arg("up", rows(f), Access::Read),
            arg("dh", rows(f), Access::Read),
            arg("dgate", rows(f), Access::Write),
            arg("dup", rows(f), Access::Write),
        ],
        body: vec![
            Stmt::Store {
                arg: 3,
                cols: f,
                value: Expr::load(2) * Expr::load(1) * s() * (Expr::c(1.0) + Expr::load(0) * (Expr::c(1.0) - s())),
                accumulate: false,
            },
            Stmt::Store {
                arg: 4,
                cols: f,
                value: Expr::load(2) * (Expr::load(0) / (Expr::c(1.0) + (-Expr::load(0)).exp())),
                accumulate: false,
            },
        ],
    }
}

/// SiLU forward (unfused, e.g. a gated MLP whose product is not fused): `y = x / (1 + exp(-x))`.
/// Args: x (R, rows d), y (W, rows d).
pub fn silu(d: usize) -> Kernel {
    Kernel {
        name: format!("silu_d{d}"),
        args: vec![arg("x", rows(d), Access::Read), arg("y", rows(d), Access::Write)],
        body: vec![Stmt::Store {
            arg: 1,
            cols: d,
            value: Expr::load(0) / (Expr::c(1.0) + (-Expr::load(0)).exp()),
            accumulate: false,
        }],
    }
}

/// SiLU backward: with `s = sigmoid(x)`, `dx = g s (1 + x (1 - s))`.
/// Args: g (R, rows d), x (R, rows d), dx (W, rows d).
pub fn silu_grad(d: usize) -> Kernel {
    let s = || sigmoid(Expr::load(1));
    Kernel {
        name: format!("silu_grad_d{d}"),
        args: vec![
            arg("g", rows(d), Access::Read),
            arg("x", rows(d), Access::Read),
            arg("dx", rows(d), Access::Write),
        ],
        body: vec![Stmt::Store {
            arg: 2,
            cols: d,
            value: Expr::load(0) * s() * (Expr::c(1.0) + Expr::load(1) * (Expr::c(1.0) - s())),
            accumulate: false,
        }],
    }
}

/// A sum of `k` same-shaped operands (residual adds and gradient sums): `y = x_0 + ... + x_{k-1}`.
/// Args: x_0 .. x_{k-1} (R, rows d), y (W, rows d).
pub fn add_n(d: usize, k: usize) -> Kernel {
    let mut args: Vec<Arg> = (0..k).map(|i| arg(&format!("x{i}"), rows(d), Access::Read)).collect();
    args.push(arg("y", rows(d), Access::Write));
    let value = (1..k).fold(Expr::load(0), |acc, i| acc + Expr::load(i));
    Kernel {
        name: format!("add{k}_d{d}"),
        args,
        body: vec![Stmt::Store {
            arg: k,
            cols: d,
            value,
            accumulate: false,
        }],
    }
}

/// Rotate-half RoPE forward on rows of `width = heads * head_dim`, positions `row % seq`:
/// `y_j = x_j cos_f + rot_j sin_f`, `f = j % (hd/2)`, `rot_j = -x_{j+hd/2}` in the
/// first half of a head and `x_{j-hd/2}` in the second.
/// Args: x (R, rows width), cos (R, periodic seq x hd/2), sin (R, periodic), y (W, rows width).
pub fn rope(width: usize, head_dim: usize, seq: usize) -> Kernel {
    rope_kernel(width, head_dim, seq, false)
}

/// RoPE backward: the inverse rotation, `dx_j = g_j cos_f - rot_j(g) sin_f`.
/// Args as [`rope`] with g in place of x and dx in place of y.
pub fn rope_grad(width: usize, head_dim: usize, seq: usize) -> Kernel {
    rope_kernel(width, head_dim, seq, true)
}

fn rope_kernel(width: usize, head_dim: usize, seq: usize, inverse: bool) -> Kernel {
    let half = head_dim / 2;
    let table = ArgTy::Periodic {
        period: seq,
        cols: half,
    };
    let partner = Expr::at(0, Col::RopePartner { head_dim });
    // rotate_half: -x2 in the first half, x1 in the second; the inverse flips the sign.
    let (first, second) = if inverse {
        (partner.clone(), -partner)
    } else {
        (-partner.clone(), partner)
    };
    let rot = Expr::select(Cond::FirstHalf { head_dim }, first, second);
    let f = Col::HalfIndex { head_dim };
    Kernel {
        name: format!(
            "rope{}_w{width}_hd{head_dim}_s{seq}",
            if inverse { "_grad" } else { "" }
        ),
        args: vec![
            arg(if inverse { "g" } else { "x" }, rows(width), Access::Read),
            arg("cos", table, Access::Read),
            arg("sin", table, Access::Read),
            arg(if inverse { "dx" } else { "y" }, rows(width), Access::Write),
        ],
        body: vec![Stmt::Store {
            arg: 3,
            cols: width,
            value: Expr::load(0) * Expr::at(1, f) + rot * Expr::at(2, f),
            accumulate: false,
        }],
    }
}

/// The LaMDA adapter epilogue: `u = z S^T`, `y = base + alpha u B^T` (small r).
/// Args: base (R, rows d_out), z (R, rows r), S (R, vector r*r), B (R, vector d_out*r),
/// u (W, rows r), y (W, rows d_out).
pub fn lamda_epilogue(d_out: usize, r: usize, alpha: f64) -> Kernel {
    Kernel {
        name: format!("lamda_epilogue_o{d_out}_r{r}_a{alpha:e}"),
        args: vec![
            arg("base", rows(d_out), Access::Read),
            arg("z", rows(r), Access::Read),
            arg("S", ArgTy::Vector { len: r * r }, Access::Read),
            arg("B", ArgTy::Vector { len: d_out * r }, Access::Read),
            arg("u", rows(r), Access::Write),
            arg("y", rows(d_out), Access::Write),
        ],
        body: vec![
            Stmt::Store {
                arg: 4,
                cols: r,
                value: Expr::RowDot {
                    a: 1,
                    b: 2,
                    len: r,
                    bt: false,
                },
                accumulate: false,
            },
            Stmt::Store {
                arg: 5,
                cols: d_out,
                value: Expr::load(0)
                    + Expr::c(alpha)
                        * Expr::RowDot {
                            a: 4,
                            b: 3,
                            len: r,
                            bt: false,
                        },
                accumulate: false,
            },
        ],
    }
}

/// A low-rank epilogue without a core: `y = base + scale x_r B^T` (LoRA after `x A^T`).
/// Args: base (R, rows d_out), xr (R, rows r), B (R, vector d_out*r), y (W, rows d_out).
pub fn lowrank_epilogue(d_out: usize, r: usize, scale: f64) -> Kernel {
    Kernel {
        name: format!("lowrank_epilogue_o{d_out}_r{r}_s{scale:e}"),
        args: vec![
            arg("base", rows(d_out), Access::Read),
            arg("xr", rows(r), Access::Read),
            arg("B", ArgTy::Vector { len: d_out * r }, Access::Read),
            arg("y", rows(d_out), Access::Write),
        ],
        body: vec![Stmt::Store {
            arg: 3,
            cols: d_out,
            value: Expr::load(0)
                + Expr::c(scale)
                    * Expr::RowDot {
                        a: 1,
                        b: 2,
                        len: r,
                        bt: false,
                    },
            accumulate: false,
        }],
    }
}

/// The small product of the LaMDA backward: `g_z = g_u S` (r x r).
/// Args: gu (R, rows r), S (R, vector r*r), gz (W, rows r).
pub fn small_matmul(r: usize) -> Kernel {
    Kernel {
        name: format!("small_matmul_r{r}"),
        args: vec![
            arg("gu", rows(r), Access::Read),
            arg("S", ArgTy::Vector { len: r * r }, Access::Read),
            arg("gz", rows(r), Access::Write),
        ],
        body: vec![Stmt::Store {
            arg: 2,
            cols: r,
            value: Expr::RowDot {
                a: 0,
                b: 1,
                len: r,
                bt: true,
            },
            accumulate: false,
        }],
    }
}

/// Causal-LM cross-entropy of one row with its (already shifted) target, and
/// with `grad` its gradient: `lse = m + log(sum exp(x - m))`, `loss = lse - x[t]`
/// (0 when `t < 0`), `dlogits = (exp(x - m) / sum - [j == t]) * grad_scale`.
/// Args: logits (R, rows V), target (R, per-row i64), loss (W, per row),
/// then with `grad`: grad_scale (scalar), dlogits (W, rows V).
pub fn cross_entropy(vocab: usize, grad: bool) -> Kernel {
    let mut args = vec![
        arg("logits", rows(vocab), Access::Read),
        arg("target", ArgTy::PerRowI64, Access::Read),
        arg("loss", ArgTy::PerRow, Access::Write),
    ];
    let mut body = vec![
        Stmt::Reduce {
            var: 0,
            op: Reduce::Max,
            cols: vocab,
            value: Expr::load(0),
        },
        Stmt::Reduce {
            var: 1,
            op: Reduce::Sum,
            cols: vocab,
            value: (Expr::load(0) - Expr::var(0)).exp(),
        },
        Stmt::Let {
            var: 2,
            value: Expr::var(0) + Expr::var(1).log(),
        },
        Stmt::Let {
            var: 3,
            value: Expr::load(1),
        },
        Stmt::StoreRow {
            arg: 2,
            value: Expr::select(
                Cond::NonNegative(3),
                Expr::var(2) - Expr::at(0, Col::Var(3)),
                Expr::c(0.0),
            ),
        },
    ];
    if grad {
        args.push(arg("grad_scale", ArgTy::Scalar, Access::Read));
        args.push(arg("dlogits", rows(vocab), Access::Write));
        let p = (Expr::load(0) - Expr::var(0)).exp() / Expr::var(1);
        let onehot = Expr::select(Cond::ColIs(3), Expr::c(1.0), Expr::c(0.0));
        body.push(Stmt::Store {
            arg: 4,
            cols: vocab,
            value: Expr::select(Cond::NonNegative(3), (p - onehot) * Expr::load(3), Expr::c(0.0)),
            accumulate: false,
        });
    }
    Kernel {
        name: format!("cross_entropy{}_v{vocab}", if grad { "_grad" } else { "" }),
        args,
        body,
    }
}

/// AdamW (PyTorch semantics, SEMANTICS §6) on the trainable columns `j >= frozen`;
/// frozen columns keep parameter and moments:
/// `p *= decay; m = b1 m + c1 g; v = b2 v + c2 g^2; p -= step (m / (sqrt(v) / bc2 + eps))`.
/// Args: p (RW, rows cols), g (R), m (RW), v (RW), then scalars decay (`1 - lr wd`),
/// step (`lr / (1 - b1^k)`), b1, c1 (`1 - b1`), b2, c2 (`1 - b2`), bc2 (`sqrt(1 - b2^k)`), eps, frozen.
pub fn adamw(cols: usize) -> Kernel {
    let names = ["decay", "step", "b1", "c1", "b2", "c2", "bc2", "eps", "frozen"];
    let mut args = vec![
        arg("p", rows(cols), Access::ReadWrite),
        arg("g", rows(cols), Access::Read),
        arg("m", rows(cols), Access::ReadWrite),
        arg("v", rows(cols), Access::ReadWrite),
    ];
    args.extend(names.iter().map(|n| arg(n, ArgTy::Scalar, Access::Read)));
    let s = |n: &str| Expr::load(4 + names.iter().position(|x| *x == n).unwrap_or(0));
    let keep = |a: usize, new: Expr| Expr::select(Cond::ColBelow { arg: 12 }, Expr::load(a), new);
    Kernel {
        name: format!("adamw_c{cols}"),
        args,
        body: vec![
            Stmt::Store {
                arg: 0,
                cols,
                value: keep(0, Expr::load(0) * s("decay")),
                accumulate: false,
            },
            Stmt::Store {
                arg: 2,
                cols,
                value: keep(2, s("b1") * Expr::load(2) + s("c1") * Expr::load(1)),
                accumulate: false,
            },
            Stmt::Store {
                arg: 3,
                cols,
                value: keep(3, s("b2") * Expr::load(3) + s("c2") * (Expr::load(1) * Expr::load(1))),
                accumulate: false,
            },
            Stmt::Store {
                arg: 0,
                cols,
                value: keep(
                    0,
                    Expr::load(0) - s("step") * (Expr::load(2) / (Expr::load(3).sqrt() / s("bc2") + s("eps"))),
                ),
                accumulate: false,
            },
        ],
    }
}

/// Every kernel constructor at a few shapes (for tests of the code generators).
pub fn examples() -> Vec<Kernel> {
    vec![
        rmsnorm(17, 1e-5),
        rmsnorm_grad(17),
        layernorm(17, 1e-12),
        layernorm_grad(17),
        gelu(13),
        gelu_grad(13),
        tanh(13),
        tanh_grad(13),
        bias_add(7),
        swiglu(13),
        swiglu_grad(13),
        silu(13),
        silu_grad(13),
        add_n(7, 3),
        rope(24, 6, 5),
        rope_grad(24, 6, 5),
        lamda_epilogue(9, 3, 0.5),
        lowrank_epilogue(9, 3, 2.0),
        small_matmul(3),
        cross_entropy(11, false),
        cross_entropy(11, true),
        adamw(5),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::verify;

    #[test]
    fn every_library_kernel_verifies() {
        for k in examples() {
            verify(&k).unwrap_or_else(|e| panic!("{e}\n{k}"));
        }
    }
}
