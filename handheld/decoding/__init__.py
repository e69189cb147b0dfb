"""Floor 3: what is done with a loaded program, whatever runs it: the greedy decode loop (`generation`), speculative
decoding with a draft (`speculative`), the multi-turn session (`chat`) and the Llama Guard check (`guard`)."""
