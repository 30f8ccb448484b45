"""llm: a plain-PyTorch multi-task DPO oracle for amasim."""
