//! The kernels of kernels/*.cu, named by an enum (`Kernel`), and the sources that define them
//! (`MODULES`, compiled by NVRTC at start-up). The registry test below keeps the enum and the
//! sources in step: a kernel missing from either fails it.

/// Helpers every kernel module shares (compiled in front of each .cu).
pub const COMMON: &str = include_str!("kernels/common.cuh");

macro_rules! kernels {
    ($($variant:ident = $name:literal, $typed:literal;)*) => {
        /// A kernel of kernels/*.cu by its base name (`typed`: it has `_f16` / `_bf16` variants,
        /// the engine's dtype picks one at start-up).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kernel {
            $($variant,)*
        }

        impl Kernel {
            /// Every kernel, in declaration order.
            #[cfg(test)]
            pub const ALL: &'static [Kernel] = &[$(Kernel::$variant,)*];

            /// The base name in the .cu source (without the dtype suffix).
            pub fn name(self) -> &'static str {
                match self {
                    $(Kernel::$variant => $name,)*
                }
            }

            /// Whether the source defines `{name}_f16` and `{name}_bf16` rather than `{name}`.
            pub fn typed(self) -> bool {
                match self {
                    $(Kernel::$variant => $typed,)*
                }
            }
        }
    };
}

kernels! {
    // init.cu
    InitWeight = "init_weight", true;
    InitF32 = "init_f32", false;
    // norm.cu
    AddRmsnorm = "add_rmsnorm", true;
    Embedding = "embedding", true;
    // rope.cu
    QkvRope = "qkv_rope", true;
    // attention.cu
    CausalSoftmax = "causal_softmax", true;
    DecodeAttnPartial = "decode_attn_partial", true;
    DecodeAttnCombine = "decode_attn_combine", true;
    // activation.cu
    SiluMul = "silu_mul", true;
    SiluMul8 = "silu_mul8", true;
    // gemv.cu
    Gemv = "gemv", true;
    GemvBulk = "gemv_bulk", true;
    // decode.cu
    DecodeAttnFastG1 = "decode_attn_fast_g1", true;
    DecodeAttnFastG2 = "decode_attn_fast_g2", true;
    DecodeAttnFastG3 = "decode_attn_fast_g3", true;
    DecodeAttnFastG4 = "decode_attn_fast_g4", true;
    DecodeAttnFastG5 = "decode_attn_fast_g5", true;
    DecodeAttnFastG6 = "decode_attn_fast_g6", true;
    DecodeAttnFastG7 = "decode_attn_fast_g7", true;
    DecodeAttnFastG8 = "decode_attn_fast_g8", true;
    DecodeAttnMerge = "decode_attn_merge", true;
    DecodeAttnSkG1D64 = "decode_attn_sk_g1_d64", true;
    DecodeAttnSkG1D128 = "decode_attn_sk_g1_d128", true;
    DecodeAttnSkG2D64 = "decode_attn_sk_g2_d64", true;
    DecodeAttnSkG2D128 = "decode_attn_sk_g2_d128", true;
    DecodeAttnSkG3D64 = "decode_attn_sk_g3_d64", true;
    DecodeAttnSkG3D128 = "decode_attn_sk_g3_d128", true;
    DecodeAttnSkG4D64 = "decode_attn_sk_g4_d64", true;
    DecodeAttnSkG4D128 = "decode_attn_sk_g4_d128", true;
    DecodeAttnSkG5D64 = "decode_attn_sk_g5_d64", true;
    DecodeAttnSkG5D128 = "decode_attn_sk_g5_d128", true;
    DecodeAttnSkG6D64 = "decode_attn_sk_g6_d64", true;
    DecodeAttnSkG6D128 = "decode_attn_sk_g6_d128", true;
    DecodeAttnSkG7D64 = "decode_attn_sk_g7_d64", true;
    DecodeAttnSkG7D128 = "decode_attn_sk_g7_d128", true;
    DecodeAttnSkG8D64 = "decode_attn_sk_g8_d64", true;
    DecodeAttnSkG8D128 = "decode_attn_sk_g8_d128", true;
    DecodeAttnPipeG1D64 = "decode_attn_pipe_g1_d64", true;
    DecodeAttnPipeG1D128 = "decode_attn_pipe_g1_d128", true;
    DecodeAttnPipeG2D64 = "decode_attn_pipe_g2_d64", true;
    DecodeAttnPipeG2D128 = "decode_attn_pipe_g2_d128", true;
    DecodeAttnPipeG3D64 = "decode_attn_pipe_g3_d64", true;
    DecodeAttnPipeG3D128 = "decode_attn_pipe_g3_d128", true;
    DecodeAttnPipeG4D64 = "decode_attn_pipe_g4_d64", true;
    DecodeAttnPipeG4D128 = "decode_attn_pipe_g4_d128", true;
    DecodeAttnPipeG5D64 = "decode_attn_pipe_g5_d64", true;
    DecodeAttnPipeG5D128 = "decode_attn_pipe_g5_d128", true;
    DecodeAttnPipeG6D64 = "decode_attn_pipe_g6_d64", true;
    DecodeAttnPipeG6D128 = "decode_attn_pipe_g6_d128", true;
    DecodeAttnPipeG7D64 = "decode_attn_pipe_g7_d64", true;
    DecodeAttnPipeG7D128 = "decode_attn_pipe_g7_d128", true;
    DecodeAttnPipeG8D64 = "decode_attn_pipe_g8_d64", true;
    DecodeAttnPipeG8D128 = "decode_attn_pipe_g8_d128", true;
    DecodeAttnMmaD64 = "decode_attn_mma_d64", true;
    DecodeAttnMmaD128 = "decode_attn_mma_d128", true;
    // prefill.cu
    PrefillAttnD64W4 = "prefill_attn_d64_w4", true;
    PrefillAttnD128W4 = "prefill_attn_d128_w4", true;
    PrefillAttnD64W8 = "prefill_attn_d64_w8", true;
    PrefillAttnD128W8 = "prefill_attn_d128_w8", true;
    PrefillAttnD64W4M2 = "prefill_attn_d64_w4m2", true;
    PrefillAttnD128W4M2 = "prefill_attn_d128_w4m2", true;
    PrefillAttnD64W4M2S3 = "prefill_attn_d64_w4m2s3", true;
    PrefillAttnD128W4M2S3 = "prefill_attn_d128_w4m2s3", true;
    // sampling.cu
    ArgmaxRows = "argmax_rows", false;
    SelectTokens = "select_tokens", false;
}

/// One .cu source of kernels/ and the kernels it must define.
pub struct Module {
    pub name: &'static str,
    pub source: &'static str,
    pub kernels: &'static [Kernel],
}

/// The kernel sources and the kernels each must define.
pub const MODULES: &[Module] = {
    use Kernel::*;
    &[
        Module { name: "init", source: include_str!("kernels/init.cu"), kernels: &[InitWeight, InitF32] },
        Module { name: "norm", source: include_str!("kernels/norm.cu"), kernels: &[AddRmsnorm, Embedding] },
        Module { name: "rope", source: include_str!("kernels/rope.cu"), kernels: &[QkvRope] },
        Module {
            name: "attention",
            source: include_str!("kernels/attention.cu"),
            kernels: &[CausalSoftmax, DecodeAttnPartial, DecodeAttnCombine],
        },
        Module { name: "activation", source: include_str!("kernels/activation.cu"), kernels: &[SiluMul, SiluMul8] },
        Module { name: "gemv", source: include_str!("kernels/gemv.cu"), kernels: &[Gemv, GemvBulk] },
        Module {
            name: "decode",
            source: include_str!("kernels/decode.cu"),
            kernels: &[
                DecodeAttnFastG1,
                DecodeAttnFastG2,
                DecodeAttnFastG3,
                DecodeAttnFastG4,
                DecodeAttnFastG5,
                DecodeAttnFastG6,
                DecodeAttnFastG7,
                DecodeAttnFastG8,
                DecodeAttnMerge,
                DecodeAttnSkG1D64,
                DecodeAttnSkG1D128,
                DecodeAttnSkG2D64,
                DecodeAttnSkG2D128,
                DecodeAttnSkG3D64,
                DecodeAttnSkG3D128,
                DecodeAttnSkG4D64,
                DecodeAttnSkG4D128,
                DecodeAttnSkG5D64,
                DecodeAttnSkG5D128,
                DecodeAttnSkG6D64,
                DecodeAttnSkG6D128,
                DecodeAttnSkG7D64,
                DecodeAttnSkG7D128,
                DecodeAttnSkG8D64,
                DecodeAttnSkG8D128,
                DecodeAttnPipeG1D64,
                DecodeAttnPipeG1D128,
                DecodeAttnPipeG2D64,
                DecodeAttnPipeG2D128,
                DecodeAttnPipeG3D64,
                DecodeAttnPipeG3D128,
                DecodeAttnPipeG4D64,
                DecodeAttnPipeG4D128,
                DecodeAttnPipeG5D64,
                DecodeAttnPipeG5D128,
                DecodeAttnPipeG6D64,
                DecodeAttnPipeG6D128,
                DecodeAttnPipeG7D64,
                DecodeAttnPipeG7D128,
                DecodeAttnPipeG8D64,
                DecodeAttnPipeG8D128,
                DecodeAttnMmaD64,
                DecodeAttnMmaD128,
            ],
        },
        Module {
            name: "prefill",
            source: include_str!("kernels/prefill.cu"),
            kernels: &[
                PrefillAttnD64W4,
                PrefillAttnD128W4,
                PrefillAttnD64W8,
                PrefillAttnD128W8,
                PrefillAttnD64W4M2,
                PrefillAttnD128W4M2,
                PrefillAttnD64W4M2S3,
                PrefillAttnD128W4M2S3,
            ],
        },
        Module { name: "sampling", source: include_str!("kernels/sampling.cu"), kernels: &[ArgmaxRows, SelectTokens] },
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The symbol names a kernel has in its source.
    fn symbols(k: Kernel) -> Vec<String> {
        if k.typed() {
            vec![format!("{}_f16", k.name()), format!("{}_bf16", k.name())]
        } else {
            vec![k.name().to_string()]
        }
    }

    #[test]
    fn every_registered_kernel_is_in_its_source() {
        for m in MODULES {
            for &k in m.kernels {
                for v in symbols(k) {
                    // Direct definitions, or decode.cu's macro-generated instantiations.
                    let direct = m.source.contains(&format!(" {v}("));
                    // (decode_attn_{fast,sk,pipe}_g{G}...: the macro line for that G must be there).
                    let g = |prefix: &str| v.strip_prefix(prefix).and_then(|r| r.split('_').next()).map(str::to_string);
                    let by_macro = g("decode_attn_fast_g")
                        .is_some_and(|g| m.source.contains(&format!("\nDQ_KERNELS({g}, ")))
                        || g("decode_attn_sk_g").is_some_and(|g| m.source.contains(&format!("\nSK_KERNELS({g})")))
                        || g("decode_attn_pipe_g").is_some_and(|g| m.source.contains(&format!("\nPT_KERNELS({g})")))
                        || v.strip_prefix("decode_attn_mma_d")
                            .and_then(|r| r.split('_').next())
                            .is_some_and(|d| m.source.contains(&format!("\nMM_KERNEL({d})")));
                    assert!(direct || by_macro, "{}.cu lacks kernel {v}", m.name);
                }
            }
        }
    }

    #[test]
    fn every_kernel_is_in_exactly_one_module_and_names_are_unique() {
        for &k in Kernel::ALL {
            let n = MODULES.iter().filter(|m| m.kernels.contains(&k)).count();
            assert_eq!(n, 1, "{k:?} is in {n} modules");
            assert_eq!(
                Kernel::ALL.iter().filter(|o| o.name() == k.name()).count(),
                1,
                "{k:?}: name `{}` twice",
                k.name()
            );
        }
        assert_eq!(MODULES.iter().map(|m| m.kernels.len()).sum::<usize>(), Kernel::ALL.len());
    }

    /// The text from each `extern "C" __global__` of a source on (macro templates included).
    fn definitions(source: &str) -> impl Iterator<Item = &str> {
        source.match_indices("extern \"C\" __global__").map(move |(i, _)| &source[i..])
    }

    /// Programmatic dependent launch (TPPROF_CUDA_PDL=1) lets a kernel start before the one ahead of
    /// it in the stream has finished: each kernel must wait (common.cuh's pdl_wait) before its first
    /// memory access, so its body starts with it. Fails on a kernel added without it.
    #[test]
    fn every_kernel_waits_for_its_predecessor_first() {
        assert!(
            COMMON.contains("__device__ __forceinline__ void pdl_wait()") && COMMON.contains("griddepcontrol.wait")
        );
        let mut seen = 0;
        for m in MODULES {
            for rest in definitions(m.source) {
                let body = &rest[rest.find('{').expect("a kernel body") + 1..];
                let first = body.trim_start_matches(|c: char| c.is_whitespace() || c == '\\');
                // gemv.cu's gemv_bulk requests its first chunks of W (never written by an earlier
                // kernel) before the wait, which then comes before its first read of x: its kernels
                // call an impl that must hold that wait.
                let prefetches_weights_first = first.starts_with("gemv_bulk_impl<")
                    && m.source.contains("pdl_wait();  // x is the previous kernel's output");
                assert!(
                    first.starts_with("pdl_wait();") || prefetches_weights_first,
                    "{}.cu: a kernel does not start with pdl_wait(): {}",
                    m.name,
                    &rest[..rest.find('(').unwrap_or(40).min(120)]
                );
                seen += 1;
            }
        }
        assert!(seen >= 40, "{seen} kernel definitions");
    }

    /// The other direction: every kernel the sources define (`extern "C" __global__`, and decode.cu's
    /// macro instantiations) is a `Kernel` of that module.
    #[test]
    fn every_kernel_in_the_sources_is_in_the_enum() {
        let known = |m: &Module, sym: &str| m.kernels.iter().any(|&k| symbols(k).iter().any(|s| s == sym));
        let mut seen = 0;
        for m in MODULES {
            for rest in definitions(m.source) {
                // The name is the identifier in front of the first `(` after `void` (past a
                // `__launch_bounds__(...)`).
                let after_void = &rest[rest.find(" void ").expect("a kernel returns void") + 6..];
                let after_void = match after_void.strip_prefix("__launch_bounds__(") {
                    Some(r) => &r[r.find(')').unwrap() + 1..],
                    None => after_void,
                };
                let name: String = after_void
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '#')
                    .collect();
                if name.contains("##") {
                    continue; // a macro template: its instantiations are checked below
                }
                assert!(known(m, &name), "{}.cu defines kernel {name}, which no Kernel names", m.name);
                seen += 1;
            }
            // decode.cu's instantiations: DQ_KERNELS(G, MINB), SK_KERNELS(G), PT_KERNELS(G) (head_dim 64 and 128),
            // MM_KERNEL(D).
            for line in m.source.lines() {
                let arg = |p: &str| line.strip_prefix(p).and_then(|r| r.split([',', ')']).next()).map(str::trim);
                let syms: Vec<String> = if let Some(g) = arg("DQ_KERNELS(") {
                    vec![format!("decode_attn_fast_g{g}")]
                } else if let Some(g) = arg("SK_KERNELS(") {
                    vec![format!("decode_attn_sk_g{g}_d64"), format!("decode_attn_sk_g{g}_d128")]
                } else if let Some(g) = arg("PT_KERNELS(") {
                    vec![format!("decode_attn_pipe_g{g}_d64"), format!("decode_attn_pipe_g{g}_d128")]
                } else if let Some(d) = arg("MM_KERNEL(") {
                    vec![format!("decode_attn_mma_d{d}")]
                } else {
                    continue;
                };
                for s in syms {
                    for v in [format!("{s}_f16"), format!("{s}_bf16")] {
                        assert!(known(m, &v), "{}.cu instantiates kernel {v}, which no Kernel names", m.name);
                        seen += 1;
                    }
                }
            }
        }
        // Every symbol of every Kernel was met once.
        assert_eq!(seen, Kernel::ALL.iter().map(|&k| symbols(k).len()).sum::<usize>());
    }
}
