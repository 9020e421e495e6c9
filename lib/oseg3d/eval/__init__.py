"""Evaluation: metrics as pure functions (arrays in, dict out), MV mesh mapping, reports.

Shared by training validation and the evaluate step (DESIGN §7). Numbers follow the official scripts:
ScanNet instance AP (`instance_ap`), ScanNet semantic IoU (`semantic`), ASIS coverage and
precision / recall (`coverage`); `mesh_mapping` carries online predictions to the mesh as ESAM does.
"""
from oseg3d.eval.coverage import evaluate_coverage, evaluate_coverage_agnostic, mode_labels
from oseg3d.eval.instance_ap import (
    MIN_REGION_SIZE, OVERLAPS, SceneInstances, average_precision, encode_gt_ids, evaluate_instances,
    evaluate_instances_agnostic, instance_classes,
)
from oseg3d.eval.mesh_mapping import (
    map_semantic_to_mesh, map_to_mesh, nearest_source, segment_vote_labels, segment_vote_masks,
)
from oseg3d.eval.report import ap_table_markdown, flat_metrics, summary_markdown
from oseg3d.eval.semantic import ConfusionMatrix, semantic_metrics

__all__ = [
    "MIN_REGION_SIZE", "OVERLAPS", "SceneInstances", "average_precision", "encode_gt_ids",
    "evaluate_instances", "evaluate_instances_agnostic", "instance_classes",
    "evaluate_coverage", "evaluate_coverage_agnostic", "mode_labels",
    "ConfusionMatrix", "semantic_metrics",
    "map_to_mesh", "map_semantic_to_mesh", "nearest_source", "segment_vote_masks", "segment_vote_labels",
    "ap_table_markdown", "summary_markdown", "flat_metrics",
]
