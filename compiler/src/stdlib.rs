//! The standard library: adapter methods and model families written in .lamda, embedded at build time.

/// Every stdlib file: (path shown in diagnostics, source text), in load order.
pub const FILES: &[(&str, &str)] = &[
    (
        "stdlib/adapters/lamda.lamda",
        include_str!("../../stdlib/adapters/lamda.lamda"),
    ),
    (
        "stdlib/adapters/lora.lamda",
        include_str!("../../stdlib/adapters/lora.lamda"),
    ),
    (
        "stdlib/adapters/lora_fa.lamda",
        include_str!("../../stdlib/adapters/lora_fa.lamda"),
    ),
    (
        "stdlib/adapters/pissa.lamda",
        include_str!("../../stdlib/adapters/pissa.lamda"),
    ),
    (
        "stdlib/models/llama.lamda",
        include_str!("../../stdlib/models/llama.lamda"),
    ),
    (
        "stdlib/models/bert.lamda",
        include_str!("../../stdlib/models/bert.lamda"),
    ),
];
