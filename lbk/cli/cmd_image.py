"""lbk image: block-level images of disks, partitions and image files."""

from __future__ import annotations

import os

import click

from lbk.cli.main import CONTEXT_SETTINGS, cli, global_options, settings
from lbk.cli.output import fmt_time, human_size
from lbk.cli.params import IMAGE_REF, PATH_BYTES
from lbk.errors import ExitCode

_name_filter = click.option("--name", "name", metavar="NAME", help="With latest or a time: only images of this name.")


def _rate(size: int, seconds: float) -> str:
    return f"{human_size(size / seconds)}/s" if seconds > 0 else "-"


@cli.group("image", context_settings=CONTEXT_SETTINGS)
@global_options
def image_group() -> None:
    """Block-level images of disks, partitions and image files, for bare-metal recovery.

    An image is a snapshot of kind "image": holes and zero regions are recorded, not
    stored, and chunks are deduplicated against every earlier image and backup.

    \b
    Example:
      lbk image create /dev/nvme0n1 --tag weekly
      lbk image list
      lbk image restore latest /dev/nvme0n1 --yes
    """


@image_group.command("create", context_settings=CONTEXT_SETTINGS)
@click.argument("source", type=PATH_BYTES)
@click.option("--name", metavar="NAME", help="Name of the image (default: the source's file name).")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag the image (repeatable, or a,b).")
@click.option("--host", metavar="HOST", help="Record this host name instead of the machine's.")
@global_options
def image_create(source, name, tags, host) -> None:
    """Image SOURCE, a block device, a partition or a regular image file.

    The partition table (sfdisk) and file-system ids (blkid) are recorded when those
    tools are installed. Imaging a device that is mounted read-write gives an image that
    may be inconsistent: image an LVM or btrfs snapshot, or boot a rescue system.

    \b
    Example:
      sudo lbk image create /dev/sda --name laptop-disk --tag weekly
      lbk image create vm.img
    """
    from lbk.ops.image import ImageOptions, create_image

    s = settings()
    repo = s.open_repo()
    tag_list = [x for t in tags for x in t.split(",") if x]
    opts = ImageOptions(source=source, name=name or "", tags=tag_list, host=host or "")
    try:
        res = create_image(repo, opts, s.out.event)
    finally:
        s.out.stop_progress()
    snap = res.snapshot
    s.out.line({
        "message_type": "summary", "snapshot_id": snap.id, "name": res.name, "source": res.source,
        **res.summary(), "bytes_per_second": round(res.rate, 1),
    })
    s.out.print(f"image {snap.short_id} saved: {res.name}, {human_size(res.size)}")
    if not s.quiet:
        s.out.print(
            f"Data: {human_size(res.data_bytes)} data, {human_size(res.zero_bytes)} zero, {res.chunks} chunks"
            + (f"; partition table: {res.partition_table}" if res.partition_table else "")
        )
        s.out.print(
            f"Added: {human_size(res.data_added)} of new data ({human_size(res.stored_added)} stored) "
            f"in {res.duration:.2f}s, {_rate(res.size, res.duration)}"
        )


@image_group.command("list", context_settings=CONTEXT_SETTINGS)
@click.option("--name", metavar="NAME", help="Only images of this name.")
@global_options
def image_list(name) -> None:
    """List images, oldest first: name, size, bytes stored, time.

    \b
    Example:
      lbk image list
      lbk image list --json | jq -r '.[-1].id'
    """
    from lbk.ops.image import image_json, list_images

    s = settings()
    repo = s.open_repo()
    snaps = list_images(repo, name)
    rows = [image_json(x) for x in snaps]
    s.out.doc(rows)
    if s.json:
        return
    s.out.print(f"{'ID':<10}{'Time':<21}{'Name':<20}{'Host':<16}{'Size':>11}{'Stored':>11}  Source")
    for x, row in zip(snaps, rows):
        stored = human_size(row["stored_bytes"]) if row["stored_bytes"] is not None else "-"
        s.out.print(
            f"{x.short_id:<10}{fmt_time(x.time):<21}{x.name[:19]:<20}{x.host[:15]:<16}"
            f"{human_size(row['size']):>11}{stored:>11}  {row['source'] or ''}"
        )
    s.out.print(f"{len(snaps)} images")


@image_group.command("info", context_settings=CONTEXT_SETTINGS)
@click.argument("ref", type=IMAGE_REF)
@_name_filter
@global_options
def image_info_cmd(ref, name) -> None:
    """Show what an image records: size, sector size, partition table, file systems.

    \b
    Example:
      lbk image info latest --name sda
    """
    from lbk.ops.image import find_image, image_info

    s = settings()
    repo = s.open_repo()
    info = image_info(repo, find_image(repo, ref, name))
    s.out.doc(info)
    if s.json:
        return
    s.out.print(f"image {info['short_id']}  {info['name']}  taken {info['time']} on {info['host']}")
    s.out.print(f"source:       {info['source']} ({info['source_type']})")
    s.out.print(f"size:         {human_size(info['size'])} ({info['size']} bytes), {info['sector_size']}-byte sectors")
    s.out.print(f"extents:      {info['data_extents']} data, {info['zero_extents']} zero ({human_size(info['zero_bytes'])})")
    if info["stored_bytes"] is not None:
        s.out.print(f"stored:       {human_size(info['stored_bytes'])}")
    table = info.get("partition_table") or {}
    if table.get("dump"):
        s.out.print("partition table (sfdisk --dump):")
        for line in table["dump"].rstrip("\n").splitlines():
            s.out.print(f"  {line}")
    for fs in info["filesystems"]:
        b = fs["blkid"]
        where = f"partition at {fs['offset']}" if fs["partition"] else "whole source"
        desc = " ".join(f"{k}={b[k]}" for k in ("TYPE", "PTTYPE", "UUID", "PTUUID", "LABEL") if k in b)
        s.out.print(f"{where}: {desc}")


@image_group.command("restore", context_settings=CONTEXT_SETTINGS)
@click.argument("ref", type=IMAGE_REF)
@click.argument("target", type=PATH_BYTES)
@click.option("--yes", is_flag=True, help="Overwrite a block device or a non-empty file.")
@click.option("--no-verify", is_flag=True, help="Do not re-read and check what was written.")
@_name_filter
@global_options
def image_restore(ref, target, yes, no_verify, name) -> None:
    """Write image REF to TARGET, a block device or a file, then verify it.

    A mounted or busy device, a device smaller than the image, and a non-empty file are
    refused; a device or a non-empty file needs --yes. On a file, zero regions stay
    holes.

    \b
    Example:
      lbk image restore latest /dev/sda --name sda --yes
      lbk image restore 1a2b3c4d /tmp/disk.img
    """
    from lbk.ops.image import find_image
    from lbk.ops.image_restore import restore_image

    s = settings()
    repo = s.open_repo()
    snap = find_image(repo, ref, name)
    try:
        res = restore_image(repo, snap, target, s.out.event, yes=yes, verify=not no_verify)
    finally:
        s.out.stop_progress()
    s.out.line({"message_type": "summary", **res.summary()})
    s.out.print(
        f"restored image {snap.short_id} ({snap.name}, {human_size(res.size)}) to {os.fsdecode(target)} "
        f"in {res.duration:.2f}s, {_rate(res.size, res.duration)}"
        + ("; verified" if res.verify is not None else "; not verified")
    )


@image_group.command("verify", context_settings=CONTEXT_SETTINGS)
@click.argument("ref", type=IMAGE_REF)
@click.argument("target", type=PATH_BYTES)
@_name_filter
@global_options
def image_verify(ref, target, name) -> int:
    """Compare TARGET, a block device or a file, with image REF (exit 1 if they differ).

    \b
    Example:
      lbk image verify latest /dev/sda --name sda
    """
    from lbk.ops.image import find_image
    from lbk.ops.image_restore import verify_image

    s = settings()
    repo = s.open_repo()
    snap = find_image(repo, ref, name)
    try:
        res = verify_image(repo, snap, target, s.out.event)
    finally:
        s.out.stop_progress()
    s.out.line({"message_type": "summary", **res.summary()})
    if res.identical:
        s.out.print(f"{os.fsdecode(target)} matches image {snap.short_id} ({human_size(res.size)})")
        return ExitCode.OK
    for d in res.first:
        s.out.print(f"differs at byte {d.offset} ({d.kind}; region {d.region_offset}+{d.region_length})")
    s.out.warn(
        f"{os.fsdecode(target)} differs from image {snap.short_id} in {res.differences} regions, "
        f"first at byte offset {res.first[0].offset}"
    )
    return ExitCode.FATAL
