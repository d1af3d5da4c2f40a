"""KFP component: commit the run branch, freeze it as a tag, merge into the target.

Outputs the commit id training must read: the merge commit, or with
``run_transform=false`` the target branch's current head.
"""

from kfp import dsl

from .train_kronodroid_autoencoder_component import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE)
def lakefs_commit_merge(
    run_transform: bool,
    lakefs_repository: str,
    lakefs_endpoint: str,
    run_branch: str,
    target_branch: str,
) -> str:
    """Returns the lakeFS commit id the model will be trained on."""
    from dfp_kfp.steps import commit_merge_step

    return commit_merge_step(run_transform, lakefs_repository, lakefs_endpoint, run_branch, target_branch)
