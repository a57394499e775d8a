use super::*;

const VLLM: &str = r#"# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Meta-Llama-3-8B-Instruct"} 0.25
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",enable_prefix_caching="True",gpu_memory_utilization="0.9",num_cpu_blocks="None",num_gpu_blocks="27158",num_gpu_blocks_override="None",sliding_window="None",swap_space="4"} 1.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Meta-Llama-3-8B-Instruct"} 3.0
"#;

const SGLANG: &str = r#"# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0"} 0.5
# HELP sglang:max_total_num_tokens Maximum total number of tokens
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0"} 450000.0
"#;

#[test]
fn vllm_and_sglang_expositions_give_usage_and_capacity() {
    let v = parse_exposition(VLLM);
    assert_eq!(
        v,
        vec![EngineModel {
            engine: "vllm",
            model: "meta-llama/Meta-Llama-3-8B-Instruct".into(),
            kv_usage_ratio: Some(0.25),
            kv_blocks: Some(27_158),
            block_size: Some(16),
        }]
    );
    let s = parse_exposition(SGLANG);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].engine, "sglang");
    assert_eq!(s[0].kv_usage_ratio, Some(0.5));
    assert_eq!(s[0].kv_blocks, Some(450_000));
    assert_eq!(s[0].block_size, Some(1));
    // The name before vLLM 0.10, and an exposition with nothing of ours.
    let old = parse_exposition("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n");
    assert_eq!(old[0].kv_usage_ratio, Some(0.5));
    assert!(parse_exposition("up 1\n# EOF\n").is_empty());
    // Data-parallel engine cores: the fullest one.
    let dp = parse_exposition(
        "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.1\nvllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.7\n",
    );
    assert_eq!(dp[0].kv_usage_ratio, Some(0.7));
}

#[test]
fn labels_with_escapes_and_bad_lines_do_not_break_parsing() {
    let text = "vllm:kv_cache_usage_perc{model_name=\"a \\\"quoted\\\" name, with comma\"} 0.3\n\
                garbage line\nvllm:kv_cache_usage_perc{model_name=\"x\"} not_a_number\n\
                vllm:kv_cache_usage_perc{model_name=\"y\"} NaN\n";
    let m = parse_exposition(text);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].model, "a \"quoted\" name, with comma");
}

#[test]
fn endpoints_parse_and_refuse_what_cannot_be_scraped() {
    let e: Endpoint = "http://127.0.0.1:8000/metrics".parse().unwrap();
    assert_eq!(
        (e.host.as_str(), e.port, e.path.as_str()),
        ("127.0.0.1", 8000, "/metrics")
    );
    let e: Endpoint = "http://vllm.local".parse().unwrap();
    assert_eq!((e.port, e.path.as_str()), (80, "/metrics"));
    assert!("https://x/metrics"
        .parse::<Endpoint>()
        .unwrap_err()
        .contains("http://"));
    assert!("http://x:port/metrics"
        .parse::<Endpoint>()
        .unwrap_err()
        .contains("port"));
    assert!("http://:80/".parse::<Endpoint>().is_err());
}

#[test]
fn a_dead_endpoint_is_a_reading_not_an_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e: Endpoint = format!("http://127.0.0.1:{port}/metrics").parse().unwrap();
    let r = rt.block_on(scrape(
        &e,
        Duration::from_secs(2),
        &EngineReading::default(),
    ));
    assert!(!r.up);
    assert_eq!(r.errors_total, 1);
    assert!(r.last_error.unwrap().contains("connect"));
}
