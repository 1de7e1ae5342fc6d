"""Development kit of qasr-live: code for the tests, the benchmarks (bench/) and the demo model's training
(training/) only. It is never imported by `qasr_live` and is not shipped in the wheel.

Import it from the repository root (``python -m pytest``, ``python -m bench.run``,
``python -m training.demo_model.train``): the current directory is then on ``sys.path``.

    random_checkpoint   random-weight Qwen3-ASR checkpoints (real and tiny shapes) from the official classes
    official            the official `qwen-asr` classes (config, model, processor)
    reference           the official implementation as the parity reference
    torch_reference_export  the exporter's former torch path (official model, transformers tokenizer) -> GGUF,
                        the cross-check of the torch-free exporter
    demo_speech         the demo model's grammar, espeak-ng speech, WER and offline recognition helpers
    daemon_harness      the real ``qasr-live serve`` process with its own config, and a real-time microphone
    daemon_checks       what every daemon run's events and journal must satisfy
    pulse               a private PulseAudio null sink as a virtual microphone
    desktop             Xvfb, a Tk text window, xdotool and the clipboard for the desktop tests
"""
