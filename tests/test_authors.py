"""The authors' settings by layer role (dkm.plans) against the reference JSON and WRN-k-w nets."""

import pytest
import torch

from dkm import plans as authors
from dkm.accounting import table_from_specs, total_row
from dkm.plans import layer_specs
from dkm.rows import conv_layers, num_rows
from dkm.training.models import small_cnn, wide_resnet, wrn16_4


def _wrn(depth, width, in_channels=3):
    with torch.device("meta"):
        return wide_resnet(depth, width, 0.0, in_channels, 10, True)


def test_roles_are_the_wrn16_4_conv_names_and_the_reference_shapes():
    net = wrn16_4()
    convs = conv_layers(net)
    assert tuple(name for name, _ in convs) == authors.ROLES
    layers = authors.load_reference()["layers"]
    for (name, conv), layer in zip(convs, layers, strict=True):
        assert (conv.in_channels, conv.out_channels, conv.kernel_size[0]) == (
            layer["in"],
            layer["out"],
            layer["k"],
        ), name


def test_setting_maps_every_role_to_the_reference_k_and_p():
    ref = authors.load_reference()["settings"]
    for name in authors.SETTINGS:
        by_role = authors.setting(name)
        assert list(by_role) == list(authors.ROLES)
        assert [k for k, _ in by_role.values()] == ref[name]["K"]
        assert [q for _, q in by_role.values()] == ref[name]["p"]


@pytest.mark.parametrize("depth,width", [(16, 1), (16, 2), (16, 4), (10, 1)])
@pytest.mark.parametrize("name", authors.SETTINGS)
def test_authors_plan_applies_by_role_to_the_wrn_family(depth, width, name):
    net = _wrn(depth, width, in_channels=1)  # Fashion-MNIST: conv1 has 16·1·3 = 48 rows
    by_role = authors.setting(name)
    plan = authors.authors_plan(net, name)
    convs = conv_layers(net)
    assert len(plan.K) == len(convs) and plan.setting == name
    for (conv_name, conv), k, q in zip(convs, plan.K, plan.p):
        want_k, want_p = by_role[conv_name]
        n = num_rows(conv.weight.shape)
        # K ≥ N: the layer stays dense (K = N, no dominant cluster), else the role's own K and p
        assert (k, q) == ((n, 0.0) if want_k >= n else (want_k, want_p)), conv_name
    cr = total_row(table_from_specs(layer_specs(net), plan, "official"))["cr"]
    assert plan.estimated_cr == pytest.approx(cr, rel=1e-12)
    assert plan.target_cr == round(cr, 2)


def test_wrn16_1_lacks_the_stage1_shortcut_role():
    names = [n for n, _ in conv_layers(_wrn(16, 1))]
    assert "stage1.0.shortcut" not in names and set(names) < set(authors.ROLES)
    assert len(authors.authors_plan(_wrn(16, 1), "45x").K) == 15


def test_authors_plan_on_wrn16_4_is_the_reference_plan():
    """The authors' own CRs: 43.48, 45.41, 48.12 on their layer table and on our WRN-16-4."""
    for name, cr in zip(authors.SETTINGS, (43.48, 45.41, 48.12)):
        ours = authors.authors_plan(wrn16_4(), name)
        ref = authors.reference_plan(name)
        assert ours.K == ref.K and ours.p == ref.p and ours.target_cr == cr
        rows = table_from_specs(authors.reference_specs(), ref, "official")
        assert round(total_row(rows)["cr"], 2) == cr


def test_a_net_without_roles_is_refused_naming_the_parameter():
    no_role = r"official='45x' applies by layer role.*convs \['conv2', 'conv3', 'conv4'\] have no"
    with pytest.raises(ValueError, match=no_role):
        authors.authors_plan(small_cnn(), "45x")
    with pytest.raises(ValueError, match=r"shared='47x' applies by layer role"):
        authors.per_role(["features.0"], "47x", "shared")
    with pytest.raises(ValueError, match=r"official setting='60x' is not allowed"):
        authors.authors_plan(_wrn(16, 4), "60x")
