"""Follow-up plans: the grammar, the one button vocabulary, masks, canvas counting and the plan runner."""
