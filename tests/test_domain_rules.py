"""The location rules and the status machine as pure functions, across every status."""

from __future__ import annotations

import dataclasses
import datetime
import functools

import pytest

from imageloc.server.domain import locations, status
from imageloc.server.domain.errors import DomainError, Reason
from imageloc.server.domain.model import Image, ImageStatus, Location, ValidationData
from imageloc.server.domain.policy import LocationPolicy

S = ImageStatus
POLICY = LocationPolicy()
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
A = Location("https://store.example/a.img")
B = Location("rbd://fsid/pool/b/snap")
C = Location("swift+https://swift.example/v1/c")
SHA512 = "ab" * 64
MD5 = "cd" * 16


def image(state: ImageStatus, *locs: Location, **changes: object) -> Image:
    base = Image(
        id="00000000-0000-4000-8000-000000000001",
        name="cirros",
        status=state,
        created_at=NOW,
        updated_at=NOW,
        locations=tuple(locs),
        disk_format="qcow2",
        container_format="bare",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def reason_of(call: object) -> Reason:
    assert callable(call)
    with pytest.raises(DomainError) as caught:
        call()
    return caught.value.reason


ALL = list(S)


@pytest.mark.parametrize("state", ALL)
def test_remove_is_allowed_only_while_active(state: ImageStatus) -> None:
    img = image(state, A, B)
    if state is S.ACTIVE:
        assert locations.remove_location(img, index=0).locations == (B,)
    else:
        assert reason_of(lambda: locations.remove_location(img, index=0)) is (
            Reason.IMAGE_STATUS_CONFLICT
        )


@pytest.mark.parametrize("state", ALL)
def test_replace_is_allowed_only_while_active_or_queued(state: ImageStatus) -> None:
    img = image(state, *(() if state is S.QUEUED else (A, B)))
    new = [B, A] if state is not S.QUEUED else [A, B]
    call = functools.partial(
        locations.replace_locations, img, new, validation_data=None, policy=POLICY
    )
    if state in (S.ACTIVE, S.QUEUED):
        result = call()
        assert result.locations == tuple(new)
        assert result.status is S.ACTIVE
    else:
        assert reason_of(call) is Reason.IMAGE_STATUS_CONFLICT


@pytest.mark.parametrize("state", ALL)
def test_add_is_allowed_only_while_active_or_queued(state: ImageStatus) -> None:
    img = image(state, *(() if state is S.QUEUED else (A,)))
    call = functools.partial(
        locations.add_location, img, C, index=None, validation_data=None, policy=POLICY
    )
    if state in (S.ACTIVE, S.QUEUED):
        assert call().locations[-1] == C
    else:
        assert reason_of(call) is Reason.IMAGE_STATUS_CONFLICT


@pytest.mark.parametrize("state", ALL)
def test_replace_with_empty_list_is_refused_before_the_status(state: ImageStatus) -> None:
    img = image(state, A)
    call = functools.partial(
        locations.replace_locations, img, [], validation_data=None, policy=POLICY
    )
    assert reason_of(call) is Reason.EMPTY_LOCATIONS


def test_remove_refuses_last_location_of_active_image() -> None:
    assert reason_of(lambda: locations.remove_location(image(S.ACTIVE, A), index=0)) is (
        Reason.LAST_LOCATION
    )


def test_remove_by_url_removes_first_match_and_refuses_unknown_url() -> None:
    img = image(S.ACTIVE, A, B, Location(A.url, {"k": "v"}))
    assert locations.remove_location(img, url=A.url).locations == (B, Location(A.url, {"k": "v"}))
    assert reason_of(lambda: locations.remove_location(img, url=C.url)) is (
        Reason.LOCATION_NOT_FOUND
    )


@pytest.mark.parametrize("index", [-1, 2, 99])
def test_remove_refuses_index_out_of_range(index: int) -> None:
    img = image(S.ACTIVE, A, B)
    assert reason_of(lambda: locations.remove_location(img, index=index)) is (
        Reason.INVALID_POSITION
    )


@pytest.mark.parametrize(("index", "ok"), [(-1, False), (0, True), (1, True), (2, False)])
def test_add_position_is_bounds_checked(index: int, ok: bool) -> None:
    img = image(S.ACTIVE, A)
    call = functools.partial(
        locations.add_location, img, B, index=index, validation_data=None, policy=POLICY
    )
    if ok:
        assert call().locations[index] == B
    else:
        assert reason_of(call) is Reason.INVALID_POSITION


def test_replace_on_image_with_locations_may_only_reorder_or_change_metadata() -> None:
    img = image(S.ACTIVE, A, B)
    moved = locations.replace_locations(
        img, [Location(B.url, {"store": "ceph"}), A], validation_data=None, policy=POLICY
    )
    assert [loc.url for loc in moved.locations] == [B.url, A.url]
    assert (
        reason_of(
            lambda: locations.replace_locations(img, [A, C], validation_data=None, policy=POLICY)
        )
        is Reason.LOCATIONS_NOT_EMPTY
    )


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "foo",
        "unknow://foo",
        "file:///etc/passwd",
        "filesystem:///x",
        "swift+config://ref/c/o",
        "http://",
        "https://[::1/x",
        "https://host:99999/x",
        "https://store.example/" + "x" * 240,
    ],
)
def test_bad_urls_are_invalid_locations(url: str) -> None:
    call = functools.partial(
        locations.add_location,
        image(S.ACTIVE, A),
        Location(url),
        index=None,
        validation_data=None,
        policy=POLICY,
    )
    assert reason_of(call) is Reason.INVALID_LOCATION


@pytest.mark.parametrize(
    "metadata", [{"a": 1}, {"a": None}, {"a": True}, {"a": {"b": [1]}}, {"a": ["x", 2.5]}]
)
def test_metadata_leaves_must_be_strings(metadata: dict[str, object]) -> None:
    call = functools.partial(
        locations.add_location,
        image(S.ACTIVE, A),
        Location(B.url, metadata),
        index=None,
        validation_data=None,
        policy=POLICY,
    )
    assert reason_of(call) is Reason.INVALID_LOCATION


def test_nested_string_metadata_is_accepted() -> None:
    loc = Location(B.url, {"store": "ceph", "nested": {"list": ["a", "b"], "k": "v"}})
    img = locations.add_location(
        image(S.ACTIVE, A), loc, index=0, validation_data=None, policy=POLICY
    )
    assert img.locations[0] == loc


def test_duplicates_are_refused_in_add_and_in_the_new_list() -> None:
    img = image(S.ACTIVE, A)
    assert (
        reason_of(
            lambda: locations.add_location(img, A, index=None, validation_data=None, policy=POLICY)
        )
        is Reason.DUPLICATE_LOCATION
    )
    same_url_other_metadata = Location(A.url, {"k": "v"})
    assert locations.add_location(
        img, same_url_other_metadata, index=None, validation_data=None, policy=POLICY
    ).locations == (A, same_url_other_metadata)
    assert (
        reason_of(
            lambda: locations.replace_locations(
                image(S.QUEUED), [A, A], validation_data=None, policy=POLICY
            )
        )
        is Reason.DUPLICATE_LOCATION
    )


def test_quota_counts_locations_after_the_change() -> None:
    policy = LocationPolicy(location_quota=2)
    img = image(S.ACTIVE, A, B)
    assert (
        reason_of(
            lambda: locations.add_location(img, C, index=None, validation_data=None, policy=policy)
        )
        is Reason.LOCATION_QUOTA_EXCEEDED
    )
    assert (
        reason_of(
            lambda: locations.replace_locations(
                image(S.QUEUED), [A, B, C], validation_data=None, policy=policy
            )
        )
        is Reason.LOCATION_QUOTA_EXCEEDED
    )
    unlimited = LocationPolicy(location_quota=-1)
    assert (
        len(
            locations.add_location(
                img, C, index=None, validation_data=None, policy=unlimited
            ).locations
        )
        == 3
    )


def test_add_to_queued_image_activates_it_with_its_validation_data() -> None:
    data = ValidationData(checksum=MD5, os_hash_algo="sha512", os_hash_value=SHA512)
    img = locations.add_location(
        image(S.QUEUED), A, index=None, validation_data=data, policy=POLICY
    )
    assert (img.status, img.checksum, img.os_hash_algo, img.os_hash_value) == (
        S.ACTIVE,
        MD5,
        "sha512",
        SHA512,
    )


def test_queued_image_without_formats_cannot_get_locations() -> None:
    img = image(S.QUEUED, disk_format="")
    assert (
        reason_of(
            lambda: locations.add_location(img, A, index=None, validation_data=None, policy=POLICY)
        )
        is Reason.MISSING_FORMAT
    )


@pytest.mark.parametrize(
    ("data", "state", "existing", "expected"),
    [
        (ValidationData(MD5, "sha512", SHA512), S.ACTIVE, {}, Reason.VALIDATION_DATA_CONFLICT),
        (
            ValidationData(MD5, "sha512", SHA512),
            S.QUEUED,
            {"checksum": "ef" * 16},
            Reason.VALIDATION_DATA_CONFLICT,
        ),
        (ValidationData("xyz", "sha512", SHA512), S.QUEUED, {}, Reason.INVALID_VALIDATION_DATA),
        (ValidationData("ab", "sha512", SHA512), S.QUEUED, {}, Reason.INVALID_VALIDATION_DATA),
        (ValidationData(MD5, "sha256", "ab" * 32), S.QUEUED, {}, Reason.INVALID_VALIDATION_DATA),
        (ValidationData(MD5, "sha512", "ab" * 32), S.QUEUED, {}, Reason.INVALID_VALIDATION_DATA),
        (ValidationData(MD5, "sha512", "zz" * 64), S.QUEUED, {}, Reason.INVALID_VALIDATION_DATA),
        (ValidationData(MD5, "", ""), S.QUEUED, {}, Reason.INVALID_VALIDATION_DATA),
    ],
)
def test_validation_data_checks(
    data: ValidationData, state: ImageStatus, existing: dict[str, str], expected: Reason
) -> None:
    img = image(state, *(() if state is S.QUEUED else (A,)), **existing)
    assert (
        reason_of(
            lambda: locations.add_location(img, B, index=None, validation_data=data, policy=POLICY)
        )
        is expected
    )


def test_validation_data_equal_to_the_images_is_accepted_on_active() -> None:
    img = image(S.ACTIVE, A, checksum=MD5, os_hash_algo="sha512", os_hash_value=SHA512)
    data = ValidationData(MD5, "sha512", SHA512)
    assert locations.add_location(img, B, index=None, validation_data=data, policy=POLICY)


def test_remove_never_changes_size_checksum_or_status() -> None:
    img = image(S.ACTIVE, A, B, size=10, checksum=MD5)
    after = locations.remove_location(img, index=1)
    assert (after.size, after.checksum, after.status) == (10, MD5, S.ACTIVE)


# The status machine

TRANSITIONS_ALLOWED = {
    (S.QUEUED, S.SAVING), (S.QUEUED, S.UPLOADING), (S.QUEUED, S.IMPORTING),
    (S.QUEUED, S.ACTIVE), (S.QUEUED, S.DELETED),
    (S.SAVING, S.ACTIVE), (S.SAVING, S.KILLED), (S.SAVING, S.DELETED), (S.SAVING, S.QUEUED),
    (S.UPLOADING, S.IMPORTING), (S.UPLOADING, S.QUEUED), (S.UPLOADING, S.DELETED),
    (S.IMPORTING, S.ACTIVE), (S.IMPORTING, S.DELETED), (S.IMPORTING, S.QUEUED),
    (S.ACTIVE, S.PENDING_DELETE), (S.ACTIVE, S.DELETED), (S.ACTIVE, S.DEACTIVATED),
    (S.KILLED, S.DELETED),
    (S.PENDING_DELETE, S.DELETED), (S.PENDING_DELETE, S.ACTIVE),
    (S.DEACTIVATED, S.ACTIVE), (S.DEACTIVATED, S.DELETED),
}  # fmt: skip


@pytest.mark.parametrize("current", ALL)
@pytest.mark.parametrize("target", ALL)
def test_transition_table_is_glances(current: ImageStatus, target: ImageStatus) -> None:
    assert status.can_transition(current, target) is ((current, target) in TRANSITIONS_ALLOWED)


LIFECYCLE = {
    "begin_upload": (status.begin_upload, {S.QUEUED}, S.SAVING),
    "fail_upload": (status.fail_upload, {S.SAVING}, S.KILLED),
    "stage": (status.stage, {S.QUEUED}, S.UPLOADING),
    "begin_import": (status.begin_import, {S.QUEUED, S.UPLOADING}, S.IMPORTING),
    "deactivate": (status.deactivate, {S.ACTIVE, S.DEACTIVATED}, S.DEACTIVATED),
    "reactivate": (status.reactivate, {S.DEACTIVATED, S.ACTIVE}, S.ACTIVE),
}


@pytest.mark.parametrize("name", sorted(LIFECYCLE))
@pytest.mark.parametrize("state", ALL)
def test_lifecycle_moves_from_allowed_statuses_only(name: str, state: ImageStatus) -> None:
    move, allowed, target = LIFECYCLE[name]
    img = image(state)
    if state in allowed:
        assert move(img).status is target
    else:
        assert reason_of(lambda: move(img)) is Reason.INVALID_TRANSITION


@pytest.mark.parametrize("move", [status.begin_upload, status.begin_import])
def test_leaving_queued_for_data_needs_both_formats(move: object) -> None:
    assert callable(move)
    img = image(S.QUEUED, container_format="")
    assert reason_of(lambda: move(img)) is Reason.MISSING_FORMAT


def test_staging_needs_no_formats_but_importing_from_uploading_does() -> None:
    img = status.stage(image(S.QUEUED, disk_format="", container_format=""))
    assert img.status is S.UPLOADING
    assert reason_of(lambda: status.begin_import(img)) is Reason.MISSING_FORMAT


def test_delete_protected_is_refused_and_delayed_delete_pends_active_with_locations() -> None:
    assert reason_of(
        lambda: status.delete(image(S.ACTIVE, A, protected=True), delayed_delete=False)
    ) is (Reason.IMAGE_PROTECTED)
    assert status.delete(image(S.ACTIVE, A), delayed_delete=True).status is S.PENDING_DELETE
    assert status.delete(image(S.QUEUED), delayed_delete=True).status is S.DELETED
    assert status.delete(image(S.ACTIVE, A), delayed_delete=False).status is S.DELETED
    assert reason_of(lambda: status.delete(image(S.DEACTIVATED, A), delayed_delete=True)) is (
        Reason.INVALID_TRANSITION
    )


def test_complete_upload_puts_location_first_and_records_hashes() -> None:
    img = locations.complete_upload(
        image(S.SAVING),
        A,
        size=42,
        hashes={"checksum": MD5, "os_hash_algo": "sha512", "os_hash_value": SHA512},
        policy=POLICY,
    )
    assert (img.status, img.locations, img.size, img.checksum) == (S.ACTIVE, (A,), 42, MD5)
