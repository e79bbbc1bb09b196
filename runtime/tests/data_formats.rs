//! Data files → tokens: plain text (bytes or tokenizer.json), JSONL with prompt
//! masking, token-id safetensors (the golden inputs), and every data error.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use lamda_compiler::diag::Code;
use std::path::{Path, PathBuf};

use lamda_runtime::checkpoint::{Checkpoint, LlamaConfig, ModelConfig};
use lamda_runtime::data::{BatchConfig, Batcher, DataError, Dataset, Example, IGNORE_INDEX, Source, Tokenizer};
use ndarray::{Array2, array};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use serde_json::json;

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden").join(case)
}

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn no_shuffle(seq: usize, batch: usize) -> BatchConfig {
    BatchConfig {
        seq,
        batch,
        seed: 0,
        shuffle: Some(false),
    }
}

#[test]
fn text_is_bytes_without_a_tokenizer_and_cut_into_windows() {
    let dir = tempfile::tempdir().unwrap();
    let text: Vec<u8> = (0..50u8).map(|i| b'a' + i % 26).chain([0xC3, 0xA9]).collect(); // 52 bytes, ends in "é"
    let p = write(dir.path(), "train.txt", &text);
    let data = Dataset::load(&p, &Tokenizer::bytes()).unwrap();
    assert!(data.is_byte_level());
    assert_eq!(
        data.source,
        Source::Stream(text.iter().map(|&b| u32::from(b)).collect())
    );
    data.check_vocab(256).unwrap();

    // seq 17: three windows (51 tokens), the one-token tail is dropped.
    let mut b = Batcher::new(data, no_shuffle(17, 1)).unwrap();
    assert_eq!(b.items_per_epoch(), 3);
    for w in 0..3 {
        let batch = b.next_batch();
        let want: Vec<i64> = text[w * 17..(w + 1) * 17].iter().map(|&x| i64::from(x)).collect();
        assert_eq!(batch.input_ids.row(0).to_vec(), want);
        assert_eq!(
            batch.labels.row(0).to_vec(),
            want,
            "labels are the ids (shift is in the loss)"
        );
        assert_eq!(batch.epoch, 0);
    }
    assert_eq!(b.next_batch().epoch, 1);
}

#[test]
fn text_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "short.txt", b"tiny");
    let data = Dataset::text(&p, &Tokenizer::bytes()).unwrap();
    let e = Batcher::new(data, no_shuffle(16, 2)).unwrap_err();
    assert_eq!(e.code(), Code::DataTooShort);
    assert!(matches!(e, DataError::TooShort { tokens: 4, seq: 16, .. }), "{e}");
    assert!(e.hint().contains("lower `seq`"));

    let p = write(dir.path(), "empty.txt", b"");
    let e = Dataset::text(&p, &Tokenizer::bytes()).unwrap_err();
    assert_eq!(e.code(), Code::DataEmpty);
    assert!(matches!(e, DataError::Empty { .. }), "{e}");

    let e = Dataset::load(&dir.path().join("missing.txt"), &Tokenizer::bytes()).unwrap_err();
    assert_eq!(e.code(), Code::DataIo);
    assert!(matches!(e, DataError::Io { .. }), "{e}");
    assert!(e.code().as_str().starts_with("lamda::data::"));

    // Bytes above the model's vocabulary.
    let p = write(dir.path(), "high.txt", &[10, 200, 20]);
    let data = Dataset::text(&p, &Tokenizer::bytes()).unwrap();
    let e = data.check_vocab(100).unwrap_err();
    assert_eq!(e.code(), Code::DataTokenOutOfVocab);
    assert!(
        matches!(
            e,
            DataError::TokenOutOfVocab {
                token: 200,
                vocab_size: 100,
                byte_level: true,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.hint().contains("256"), "{}", e.hint());
    data.check_vocab(201).unwrap();
    assert!(data.check_vocab(200).is_err());

    let e = Batcher::new(data, no_shuffle(0, 1)).unwrap_err();
    assert_eq!(e.code(), Code::DataBadBatching);
    assert!(matches!(e, DataError::BadBatching { .. }), "{e}");
}

#[test]
fn jsonl_prompt_completion_masks_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "sft.jsonl",
        b"{\"prompt\": \"ab\", \"completion\": \"cd\", \"id\": 7}\r\n\n{\"text\": \"xyz\"}\n   \n",
    );
    let data = Dataset::load(&p, &Tokenizer::bytes()).unwrap();
    let Source::Examples { examples, pad_id } = &data.source else {
        panic!("{:?}", data.source)
    };
    assert_eq!(*pad_id, 0);
    assert_eq!(
        examples,
        &vec![
            Example {
                ids: vec![97, 98, 99, 100],
                loss_from: 2,
                no_loss: vec![],
            },
            Example {
                ids: vec![120, 121, 122],
                loss_from: 0,
                no_loss: vec![],
            },
        ]
    );

    // Padded to seq 6 (pad 0, label -100), in file order.
    let mut b = Batcher::new(data.clone(), no_shuffle(6, 2)).unwrap();
    let batch = b.next_batch();
    assert_eq!(
        batch.input_ids,
        array![[97, 98, 99, 100, 0, 0], [120, 121, 122, 0, 0, 0]]
    );
    let m = IGNORE_INDEX;
    assert_eq!(batch.labels, array![[m, m, 99, 100, m, m], [120, 121, 122, m, m, m]]);

    // Longer than seq 3: the row keeps the end of the prompt (at least half a
    // row, here 1 token) and the start of the completion.
    let mut b = Batcher::new(data, no_shuffle(3, 1)).unwrap();
    let batch = b.next_batch();
    assert_eq!(batch.input_ids, array![[98, 99, 100]]);
    assert_eq!(batch.labels, array![[m, 99, 100]]);
}

/// Issue 10.8: a JSONL file that starts with a UTF-8 byte order mark (as
/// editors on Windows save it) was rejected as a syntax error on line 1.
#[test]
fn jsonl_with_a_byte_order_mark_loads_like_without() {
    let dir = tempfile::tempdir().unwrap();
    let body = b"{\"text\": \"xyz\"}\n{\"prompt\": \"ab\", \"completion\": \"cd\"}\n";
    let plain = write(dir.path(), "plain.jsonl", body);
    let with_bom = write(dir.path(), "bom.jsonl", &[b"\xef\xbb\xbf".as_slice(), body].concat());
    let want = Dataset::load(&plain, &Tokenizer::bytes()).unwrap();
    let got = Dataset::load(&with_bom, &Tokenizer::bytes()).unwrap();
    assert_eq!(got.source, want.source);
}

#[test]
fn jsonl_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], usize, &str); 7] = [
        ("syntax", b"{\"text\": \"a\"}\n{\"text\": \"b\"\n", 2, "syntax"),
        (
            "missing_completion",
            b"{\"text\": \"a\"}\n\n{\"prompt\": \"q\"}\n",
            3,
            "but no `completion`",
        ),
        ("missing_prompt", b"{\"completion\": \"c\"}\n", 1, "but no `prompt`"),
        (
            "neither",
            b"{\"question\": \"q\", \"answer\": \"a\"}\n",
            1,
            "keys: answer, question",
        ),
        (
            "both",
            b"{\"text\": \"t\", \"prompt\": \"p\", \"completion\": \"c\"}\n",
            1,
            "both",
        ),
        ("wrong_type", b"{\"text\": 5}\n", 1, "the number 5"),
        ("not_object", b"[\"text\"]\n", 1, "an array"),
    ];
    for (name, content, want_line, want_text) in cases {
        let p = write(dir.path(), &format!("{name}.jsonl"), content);
        let e = Dataset::load(&p, &Tokenizer::bytes()).unwrap_err();
        match &e {
            DataError::JsonlSyntax { line, .. } => {
                assert_eq!(e.code(), Code::DataJsonlSyntax);
                assert_eq!(*line, want_line, "{name}: {e}");
            }
            DataError::JsonlExample { line, .. } => {
                assert_eq!(e.code(), Code::DataJsonlExample);
                assert_eq!(*line, want_line, "{name}: {e}");
            }
            other => panic!("{name}: {other}"),
        }
        let shown = e.to_string();
        assert!(shown.contains(want_text) || want_text == "syntax", "{name}: {shown}");
        assert!(shown.contains(&format!("line {want_line}")), "{shown}");
        assert!(!e.hint().is_empty());
    }
    let p = write(dir.path(), "blank.jsonl", b"\n  \n");
    assert!(matches!(
        Dataset::load(&p, &Tokenizer::bytes()).unwrap_err(),
        DataError::Empty { .. }
    ));
}

#[test]
fn golden_inputs_are_used_as_is() {
    for case in ["lamda_qv_r4_linear03", "lamda_all7_r2_never", "lora_qv_r4_a8"] {
        let path = golden(case).join("inputs.safetensors");
        // Independent decode with the safetensors crate.
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let decode = |name: &str| -> Array2<i64> {
            let v = st.tensor(name).unwrap();
            assert_eq!(v.dtype(), StDtype::I64);
            assert_eq!(v.shape(), &[2, 16]);
            let vals: Vec<i64> = v
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            Array2::from_shape_vec((2, 16), vals).unwrap()
        };
        let (ids, labels) = (decode("input_ids"), decode("labels"));

        let data = Dataset::load(&path, &Tokenizer::bytes()).unwrap();
        data.check_vocab(256).unwrap();
        let ckpt = Checkpoint::open(golden(case)).unwrap();
        data.check_vocab(ckpt.config.vocab_size()).unwrap();
        // README protocol: the single batch at every step; rows in order, no shuffle.
        let mut b = Batcher::new(
            data,
            BatchConfig {
                seq: 16,
                batch: 2,
                seed: 123,
                shuffle: None,
            },
        )
        .unwrap();
        for _ in 0..3 {
            let batch = b.next_batch();
            assert_eq!(batch.input_ids, ids);
            assert_eq!(batch.labels, labels);
            assert_eq!(batch.items, vec![0, 1]);
        }
    }
}

fn ids_file(dir: &Path, name: &str, tensors: Vec<(&str, StDtype, Vec<usize>, Vec<u8>)>) -> PathBuf {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
    p
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn token_id_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ids = i64_bytes(&[1, 2, 3, 4, 5, 6]);
    // Labels default to the ids; i32 ids are accepted.
    let p = ids_file(
        dir.path(),
        "i32.safetensors",
        vec![(
            "input_ids",
            StDtype::I32,
            vec![2, 3],
            [1i32, 2, 3, 4, 5, 6].iter().flat_map(|x| x.to_le_bytes()).collect(),
        )],
    );
    let data = Dataset::token_ids(&p).unwrap();
    let Source::Rows { input_ids, labels } = &data.source else {
        panic!()
    };
    assert_eq!(input_ids, &array![[1, 2, 3], [4, 5, 6]]);
    assert_eq!(labels, input_ids);
    let e = Batcher::new(data, no_shuffle(4, 1)).unwrap_err();
    assert_eq!(e.code(), Code::DataSeqMismatch);
    assert!(
        matches!(
            e,
            DataError::SeqMismatch {
                file_seq: 3,
                seq: 4,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.hint().contains("seq 3"));

    let p = ids_file(
        dir.path(),
        "noids.safetensors",
        vec![("tokens", StDtype::I64, vec![2, 3], ids.clone())],
    );
    let e = Dataset::token_ids(&p).unwrap_err();
    assert_eq!(e.code(), Code::DataIdsLayout);
    assert!(
        matches!(&e, DataError::IdsLayout { problem, .. } if problem.contains("tokens")),
        "{e}"
    );

    let p = ids_file(
        dir.path(),
        "flat.safetensors",
        vec![("input_ids", StDtype::I64, vec![6], ids.clone())],
    );
    assert!(matches!(
        Dataset::token_ids(&p).unwrap_err(),
        DataError::IdsLayout { .. }
    ));

    let p = ids_file(
        dir.path(),
        "labelshape.safetensors",
        vec![
            ("input_ids", StDtype::I64, vec![2, 3], ids.clone()),
            ("labels", StDtype::I64, vec![3, 2], ids.clone()),
        ],
    );
    assert!(matches!(
        Dataset::token_ids(&p).unwrap_err(),
        DataError::IdsLayout { .. }
    ));

    let p = ids_file(
        dir.path(),
        "badlabel.safetensors",
        vec![
            ("input_ids", StDtype::I64, vec![2, 3], ids.clone()),
            ("labels", StDtype::I64, vec![2, 3], i64_bytes(&[-100, 2, 3, 4, -5, 6])),
        ],
    );
    let e = Dataset::token_ids(&p).unwrap_err();
    assert_eq!(e.code(), Code::DataBadLabel);
    assert!(
        matches!(
            e,
            DataError::BadLabel {
                label: -5,
                row: 1,
                pos: 1,
                ..
            }
        ),
        "{e}"
    );

    let p = ids_file(
        dir.path(),
        "float.safetensors",
        vec![("input_ids", StDtype::F32, vec![1, 2], vec![0; 8])],
    );
    let e = Dataset::token_ids(&p).unwrap_err();
    assert!(matches!(e, DataError::Checkpoint(_)), "{e}");

    let p = ids_file(
        dir.path(),
        "neg.safetensors",
        vec![("input_ids", StDtype::I64, vec![1, 2], i64_bytes(&[3, -1]))],
    );
    let e = Dataset::token_ids(&p).unwrap_err();
    assert!(
        matches!(&e, DataError::IdsLayout { problem, .. } if problem.contains("negative id -1")),
        "{e}"
    );

    // A label past the vocabulary is caught like an id.
    let p = ids_file(
        dir.path(),
        "biglabel.safetensors",
        vec![
            ("input_ids", StDtype::I64, vec![1, 2], i64_bytes(&[3, 4])),
            ("labels", StDtype::I64, vec![1, 2], i64_bytes(&[-100, 300])),
        ],
    );
    let e = Dataset::token_ids(&p).unwrap().check_vocab(256).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::TokenOutOfVocab {
                token: 300,
                byte_level: false,
                ..
            }
        ),
        "{e}"
    );
}

/// A byte-level BPE tokenizer.json (GPT-2 style pre-tokenizer, so the pure-Rust regex
/// backend is exercised) with a BOS template and a few merges.
fn tokenizer_json() -> String {
    let vocab = json!({
        "<pad>": 0, "<s>": 1, "</s>": 2,
        "h": 3, "e": 4, "l": 5, "o": 6, "Ġ": 7, "w": 8, "r": 9, "d": 10,
        "he": 11, "ll": 12, "hell": 13, "hello": 14, "Ġw": 15
    });
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": ["h e", "l l", "he ll", "hell o", "Ġ w"]
        }
    })
    .to_string()
}

#[test]
fn tokenizer_json_from_the_checkpoint_folder() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden("lora_qv_r4_a8").join(f), dir.path().join(f)).unwrap();
    }
    write(dir.path(), "tokenizer.json", tokenizer_json().as_bytes());
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let tok = Tokenizer::for_checkpoint(&ckpt).unwrap();
    assert!(!tok.is_byte_level());
    assert_eq!(tok.vocab_size(), 16);
    assert_eq!(tok.eos_id(), Some(2)); // config.json eos_token_id
    assert_eq!(tok.pad_id(), 0); // config pad_token_id is null, tokenizer sets no padding

    // "hello world": BOS, hello, Ġw o r l d.
    assert_eq!(tok.encode("hello world", true).unwrap(), vec![1, 14, 15, 6, 9, 5, 10]);
    assert_eq!(tok.encode("hello", false).unwrap(), vec![14]);

    let p = write(dir.path(), "train.txt", b"hello world");
    let data = Dataset::load(&p, &tok).unwrap();
    assert_eq!(data.source, Source::Stream(vec![1, 14, 15, 6, 9, 5, 10]));
    data.check_vocab(ckpt.config.vocab_size()).unwrap();

    // JSONL: prompt with BOS, completion without, then EOS; loss on completion + EOS.
    let p = write(
        dir.path(),
        "sft.jsonl",
        b"{\"prompt\": \"hello\", \"completion\": \" world\"}\n",
    );
    let data = Dataset::load(&p, &tok).unwrap();
    let Source::Examples { examples, pad_id } = &data.source else {
        panic!()
    };
    assert_eq!(
        examples,
        &vec![Example {
            ids: vec![1, 14, 15, 6, 9, 5, 10, 2],
            loss_from: 2,
            no_loss: vec![],
        }]
    );
    assert_eq!(*pad_id, 0);

    // pad_token_id from config.json when the tokenizer has no padding.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    cfg["pad_token_id"] = json!(2);
    let config = LlamaConfig::from_json_str(&cfg.to_string(), Path::new("config.json")).unwrap();
    let tok = Tokenizer::from_file(&dir.path().join("tokenizer.json"))
        .unwrap()
        .with_config(&ModelConfig::Llama(config));
    assert_eq!(tok.pad_id(), 2);

    // Ids past a smaller model vocabulary are caught.
    let e = data.check_vocab(10).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::TokenOutOfVocab {
                token: 15,
                byte_level: false,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn tokenizer_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "tokenizer.json", b"{\"model\": 3}");
    let e = Tokenizer::from_file(&p).unwrap_err();
    assert_eq!(e.code(), Code::DataTokenizer);
    assert!(matches!(e, DataError::Tokenizer { .. }), "{e}");
    assert!(e.hint().contains("tokenizers"));

    let tp = write(dir.path(), "ok.json", tokenizer_json().as_bytes());
    let tok = Tokenizer::from_file(&tp).unwrap();
    let p = write(dir.path(), "latin1.txt", b"hello\nwor\xE9ld\n");
    let e = Dataset::text(&p, &tok).unwrap_err();
    assert_eq!(e.code(), Code::DataNotUtf8);
    assert!(matches!(e, DataError::NotUtf8 { line: 2, .. }), "{e}");
    // Bytes do not care about UTF-8.
    assert!(Dataset::text(&p, &Tokenizer::bytes()).is_ok());
}

/// SmolLM2-135M-Instruct's chat template (ChatML with a default system turn), verbatim.
const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn chat_template(source: &str) -> lamda_runtime::generate::ChatTemplate {
    lamda_runtime::generate::ChatTemplate {
        path: PathBuf::from("tokenizer_config.json"),
        source: source.into(),
        bos_token: String::new(),
        eos_token: "<|im_end|>".into(),
    }
}

#[test]
fn jsonl_messages_train_on_the_assistant_turns_only() {
    let dir = tempfile::tempdir().unwrap();
    let line = json!({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "ok?"},
        {"role": "assistant", "content": "sure"},
    ]});
    let p = write(dir.path(), "chat.jsonl", format!("{line}\n").as_bytes());
    let t = chat_template(CHATML);
    let data = Dataset::load_with_chat(&p, &Tokenizer::bytes(), Some(&t)).unwrap();
    let Source::Examples { examples, .. } = &data.source else {
        panic!("{:?}", data.source)
    };
    // the conversation as the template writes it, by hand; the loss covers
    // each answer with its end-of-turn marker
    let sys = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    let parts = [
        (
            format!("{sys}<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
            false,
        ),
        ("yo<|im_end|>\n".to_string(), true),
        (
            "<|im_start|>user\nok?<|im_end|>\n<|im_start|>assistant\n".to_string(),
            false,
        ),
        ("sure<|im_end|>\n".to_string(), true),
    ];
    let text: String = parts.iter().map(|p| p.0.as_str()).collect();
    let counts: Vec<bool> = parts
        .iter()
        .flat_map(|(s, l)| std::iter::repeat_n(*l, s.len()))
        .collect();
    let ex = &examples[0];
    assert_eq!(ex.ids, text.bytes().map(u32::from).collect::<Vec<_>>());
    let got: Vec<bool> = (0..ex.ids.len()).map(|i| ex.counts(i)).collect();
    assert_eq!(got, counts);
    // through the batcher: labels are the ids on the answers, -100 elsewhere
    let n = ex.ids.len();
    let mut b = Batcher::new(data.clone(), no_shuffle(n, 1)).unwrap();
    let batch = b.next_batch();
    for (i, (&count, &id)) in counts.iter().zip(&ex.ids).enumerate() {
        let want = if count { i64::from(id) } else { IGNORE_INDEX };
        assert_eq!(batch.labels[[0, i]], want, "position {i}");
    }

    // no template, no assistant turn, a template that does not grow turn by turn
    let e = Dataset::load_with_chat(&p, &Tokenizer::bytes(), None).unwrap_err();
    assert_eq!(e.code(), Code::GenerateNoChatTemplate, "{e}");
    let last_only = chat_template("{{ messages[-1]['content'] }}");
    let e = Dataset::load_with_chat(&p, &Tokenizer::bytes(), Some(&last_only)).unwrap_err();
    assert_eq!(e.code(), Code::GenerateChatTemplate, "{e}");
    assert!(e.to_string().contains("not supported yet"), "{e}");
    let q = write(
        dir.path(),
        "user.jsonl",
        b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    );
    let e = Dataset::load_with_chat(&q, &Tokenizer::bytes(), Some(&t)).unwrap_err();
    assert_eq!(e.code(), Code::DataJsonlExample, "{e}");
    let q = write(dir.path(), "both.jsonl", b"{\"messages\": [], \"text\": \"x\"}\n");
    let e = Dataset::load_with_chat(&q, &Tokenizer::bytes(), Some(&t)).unwrap_err();
    assert_eq!(e.code(), Code::DataJsonlExample, "{e}");
}
