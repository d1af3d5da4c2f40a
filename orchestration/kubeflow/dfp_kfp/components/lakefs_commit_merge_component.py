"""KFP component: commit the run branch, freeze it as a tag, merge into the target.

Outputs the commit id training must read: the merge commit, or with
``run_transform=false`` the target branch's current head. It needs only lakeFS:
it runs in the (smaller) Spark image.
"""

from kfp import dsl

from .spark_transform_component import SPARK_IMAGE


@dsl.component(base_image=SPARK_IMAGE, install_kfp_package=False)
def lakefs_commit_merge(
    run_transform: bool,
    lakefs_repository: str,
    lakefs_endpoint: str,
    run_branch: str,
    target_branch: str,
    max_shrink: float,
    allow_shrink: bool,
) -> str:
    """Returns the lakeFS commit id the model will be trained on."""
    params = dict(locals())
    from dfp_kfp.steps import commit_merge_step

    return commit_merge_step(**params)

