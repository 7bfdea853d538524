"""A stage whose backend cannot load stops start-up loudly, naming the stage (own small cluster)."""

import yaml

from avatarchat.local_cluster import ROOT, ServeCluster


def test_missing_model_file_fails_startup_naming_the_stage():
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    # Cheap stages elsewhere so only the broken one matters.
    doc["applications"][0]["args"]["stages"] = {
        "asr": {"backend": "scripted"}, "tts": {"backend": "scripted"}, "avatar": {"backend": "scripted"},
        "llm": {"backend": "llama_cpp", "model_path": "/nonexistent/model.gguf"}}
    first_lines = ServeCluster(doc).failed_startup(300)
    assert "START-UP FAILED" in first_lines
    assert "deployment LLM: avatarchat.errors.StageLoadError: stage 'llm' (backend 'llama_cpp') failed to load" in first_lines
    assert "/nonexistent/model.gguf" in first_lines
