"""Floor 3: jobs that train before quantizing. `spinquant` learns rotations (Cayley SGD in `cayley`),
`qat` runs QAT then LoRA (loop in `loop`); `options` holds their typed options, `resume` their state,
`distributed` the process group. Other tools call these quantization "recipes"; ExecuTorch uses that
word for backend lowering presets, hence "training" here."""
