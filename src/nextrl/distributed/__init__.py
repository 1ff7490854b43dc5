"""Placements of the RL step beyond one process. `ray_producer`: rollouts on Ray actors (`placement.kind=ray`)."""
