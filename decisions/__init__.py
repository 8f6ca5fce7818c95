"""Audit decisions: pass / review / block from the model's scores, a policy and term lists."""
