"""Running a model over data: the training loop, the teacher, evaluation and measurement."""
