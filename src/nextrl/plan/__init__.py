"""Planning RL runs up to 10^26 FLOPs: a cost model per stage (`cost`), hardware and model profiles
(`profiles`), a simulation of synchronous and asynchronous pipelines (`simulate`), and the plan (`planner`,
`nextrl plan`)."""
