"""A deterministic generator of synthetic, KronoDroid-shaped raw data.

It writes either the four original KronoDroid archives (``layout="archives"``)
or one CSV in the format of the public real-device subset (``layout="subset"``),
plus ``GENERATED.json``, which marks the data as synthetic. Nothing here is
copied from the real dataset: the column vocabulary comes from
:mod:`dfp_core.kronodroid.schema`, and the distributions below are hand-written,
summary-level approximations (sparse heavy-tailed syscall counts, permission
base rates, APK size ranges, ...).

What the data looks like:

* benign apps come from a few "app archetypes" (game, social, tool, ...), each
  with its own permission, syscall and size profile;
* malware belongs to ~60 families (Zipf-like frequencies), each with a
  behaviour (adware, SMS fraud, spyware, ransomware, banker, rooting/dropper,
  riskware) that shifts permissions, syscalls and APK metadata away from the
  benign archetype it was built on, with a per-app strength so that some
  malware looks almost benign;
* everything drifts mildly over the years (newer permissions appear, APKs grow,
  malware families have active periods), so a time split is meaningful.

What makes a detector's job look like it does on real KronoDroid (calibrated against
aggregate statistics of the real 2019 subset only, per label: permission counts, the
strongest single columns, the metadata medians; bench/generator_fidelity.py checks that
the autoencoder, PCA and IsolationForest rank as they do there):

* benign apps request permissions in bundles (an SDK's or a feature's set); malware
  requests more of them, a la carte, so a benign model expects companions it lacks;
* a benign app's components (activities, services, receivers) grow with its size;
  malware's do not, and it has fewer files and a smaller uncompressed size for its size;
* malware is submitted to VirusTotal far less often (the strongest single column on real
  data, as here), and its dynamic traces overlap benign apps' more than its static features;
* newer benign apps have been submitted less often and every newer app has fewer files, so
  apps later than the training period look a little more like malware: as on real data, a
  time split scores lower than a random one.

Quirks of the real archives that are reproduced: every ``Package`` ends with an
embedded newline inside a quoted field, the emulator and real-device archives
carry different date columns, ``FilesInsideAPK`` is missing from
``emu_malware_v1.zip``, about 3% of the rows have the ``1980-01-01`` sentinel
date, some apps have ``nr_syscalls = 0``, and in each sub-dataset (with at least
40 rows) two sha256 values are exact duplicate rows and two carry conflicting
labels across the legitimate and malware archives.

The output is byte-for-byte deterministic for the same arguments: every random
draw comes from ``numpy.random.default_rng`` seeded from ``seed`` (one stream
per archive, so an archive's rows do not depend on the other archives' row
counts, apart from the few injected duplicate rows), zip members have a fixed
timestamp and mode, and the only float column is formatted by Python itself.
The model's parameters (rates, profiles) come from constants and a fixed
internal seed, so every ``seed`` draws from the same distribution.

CSV dialect: UTF-8, comma separated, ``"`` quotes only where needed (the
``Package`` values, which contain a newline), quotes escaped by doubling (none
occur), empty field for no family. Archive members end records with LF; the
subset CSV with CRLF, like the public subset file. Read with a multi-line
aware reader (pandas, or Spark with ``multiLine=true, escape='"'``).

From the command line: ``dfp generate --out DIR --rows N [--seed S] [--layout subset]``.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from dfp_core.kronodroid import schema
from dfp_core.kronodroid.columns import PERMISSIONS, SYSCALLS

# 2: calibrated so that the detectors rank as on real KronoDroid (bench/generator_fidelity.py).
# 3: benign apps' VirusTotal submissions and every app's file count drift with time (a time split is harder).
VERSION = 3
LAYOUTS = ("archives", "subset")
GENERATOR_NAME = "dfp_core.generator"  # the marker's stable name, kept when the module moved
MARKER = "GENERATED.json"
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
SENTINEL_DATETIME = f"{schema.SENTINEL_DATE} 00:00:00"
SUBSET_RELPATH = f"{schema.REAL_DEVICE}/kronodroid_real_device_synthetic_subset.csv"
# Rows are generated and written this many at a time (bounded memory).
CHUNK_ROWS = 16384
# Duplicate sha256 groups are only injected into sub-datasets at least this big.
MIN_ROWS_FOR_DUPLICATES = 40
# Fractions of rows with the sentinel date: on both dates / on the earliest only.
SENTINEL_BOTH = 0.02
SENTINEL_EARLIEST_ONLY = 0.01
# Fraction of apps whose dynamic analysis recorded no syscall at all.
NO_SYSCALL_RATE = {schema.EMULATOR: 0.002, schema.REAL_DEVICE: 0.005}
MAX_SYSCALL_COUNT = 300_000
# The real files end records with CRLF in the subset format; the archives use LF.
SUBSET_LINE_TERMINATOR = "\r\n"
ARCHIVE_LINE_TERMINATOR = "\n"


@dataclass(frozen=True)
class Archive:
    relpath: str
    data_source: str
    label: int
    real_rows: int
    stream: int  # index of its random stream

    @property
    def member(self) -> str:
        return Path(self.relpath).stem + ".csv"


ARCHIVES = (
    Archive(f"{schema.EMULATOR}/emu_legitimate_v1.zip", schema.EMULATOR, 0, 35_246, 0),
    Archive(f"{schema.EMULATOR}/emu_malware_v1.zip", schema.EMULATOR, 1, 28_745, 1),
    Archive(f"{schema.REAL_DEVICE}/real_legitimate_v1.zip", schema.REAL_DEVICE, 0, 36_755, 2),
    Archive(f"{schema.REAL_DEVICE}/real_malware_v1.zip", schema.REAL_DEVICE, 1, 41_382, 3),
)
FULL_ROWS = sum(a.real_rows for a in ARCHIVES)  # 142,128
DATE_PAIRS = {
    schema.EMULATOR: ("FirstModDate", "LastModDate"),
    schema.REAL_DEVICE: ("EarliestModDate", "HighestModDate"),
}
SUBSET_EXTRAS = ("Categories", "Highest-date", "year_month", "Year")


def _base_columns(with_files_inside: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    head = (schema.PACKAGE, schema.LABEL, *SYSCALLS, "nr_syscalls", *PERMISSIONS, *schema.STATIC_AGGREGATES,
            schema.SHA256)
    meta = tuple(c for c in schema.APK_METADATA if with_files_inside or c != "FilesInsideAPK")
    return head, meta


def archive_columns(data_source: str, label: int) -> tuple[str, ...]:
    """The header of a generated archive CSV (484 columns; 483 in emulator malware)."""
    head, meta = _base_columns(not (data_source == schema.EMULATOR and label == 1))
    return (*head, *meta, *DATE_PAIRS[data_source], *schema.LABEL_LEAKS, schema.FAMILY)


def subset_columns() -> tuple[str, ...]:
    """The header of the subset format (486 columns), as in the public subset file."""
    head, meta = _base_columns(True)
    return (*head, *meta, *schema.LABEL_LEAKS, schema.FAMILY, *SUBSET_EXTRAS)


def split_rows(rows: int, weights: tuple[int, ...] | None = None) -> list[int]:
    """Divide ``rows`` in proportion to ``weights`` (default: the real archive
    sizes) by largest remainder; every share gets at least 1 when rows allow."""
    weights = weights or tuple(a.real_rows for a in ARCHIVES)
    total = sum(weights)
    exact = [rows * w / total for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in by_remainder[: rows - sum(shares)]:
        shares[i] += 1
    if rows >= len(weights):
        for i in range(len(shares)):
            if shares[i] == 0:
                donor = max(range(len(shares)), key=lambda j: (shares[j], -j))
                shares[donor] -= 1
                shares[i] += 1
    return shares


# ---------------------------------------------------------------------------
# The model: fixed parameters, identical for every seed.
# ---------------------------------------------------------------------------

_MODEL_SEED = 20_210_401

# Android protection levels (public documentation); anything else is "signature".
_DANGEROUS = frozenset({
    "ACCEPT_HANDOVER", "ACCESS_BACKGROUND_LOCATION", "ACCESS_COARSE_LOCATION", "ACCESS_FINE_LOCATION",
    "ACCESS_MEDIA_LOCATION", "ACTIVITY_RECOGNITION", "ADD_VOICEMAIL", "ANSWER_PHONE_CALLS",
    "BODY_SENSORS", "CALL_PHONE", "CAMERA", "GET_ACCOUNTS", "PROCESS_OUTGOING_CALLS",
    "READ_CALENDAR", "READ_CALL_LOG", "READ_CONTACTS", "READ_EXTERNAL_STORAGE", "READ_PHONE_NUMBERS",
    "READ_PHONE_STATE", "READ_SMS", "RECEIVE_MMS", "RECEIVE_SMS", "RECEIVE_WAP_PUSH", "RECORD_AUDIO",
    "SEND_SMS", "USE_SIP", "WRITE_CALENDAR", "WRITE_CALL_LOG", "WRITE_CONTACTS", "WRITE_EXTERNAL_STORAGE",
})
_NORMAL = frozenset({
    "ACCESS_LOCATION_EXTRA_COMMANDS", "ACCESS_NETWORK_STATE", "ACCESS_NOTIFICATION_POLICY",
    "ACCESS_WIFI_STATE", "BLUETOOTH", "BLUETOOTH_ADMIN", "BROADCAST_STICKY", "CALL_COMPANION_APP",
    "CHANGE_NETWORK_STATE", "CHANGE_WIFI_MULTICAST_STATE", "CHANGE_WIFI_STATE", "DISABLE_KEYGUARD",
    "EXPAND_STATUS_BAR", "FOREGROUND_SERVICE", "GET_PACKAGE_SIZE", "GET_TASKS", "INSTALL_SHORTCUT",
    "INTERNET", "KILL_BACKGROUND_PROCESSES", "MANAGE_OWN_CALLS", "MODIFY_AUDIO_SETTINGS", "NFC",
    "NFC_PREFERRED_PAYMENT_INFO", "NFC_TRANSACTION_EVENT", "PERSISTENT_ACTIVITY", "QUERY_ALL_PACKAGES",
    "READ_SYNC_SETTINGS", "READ_SYNC_STATS", "RECEIVE_BOOT_COMPLETED", "REORDER_TASKS",
    "REQUEST_COMPANION_RUN_IN_BACKGROUND", "REQUEST_COMPANION_USE_DATA_IN_BACKGROUND",
    "REQUEST_DELETE_PACKAGES", "REQUEST_IGNORE_BATTERY_OPTIMIZATIONS", "REQUEST_PASSWORD_COMPLEXITY",
    "RESTART_PACKAGES", "SET_ALARM", "SET_WALLPAPER", "SET_WALLPAPER_HINTS", "TRANSMIT_IR",
    "UNINSTALL_SHORTCUT", "USE_BIOMETRIC", "USE_FINGERPRINT", "USE_FULL_SCREEN_INTENT", "VIBRATE",
    "WAKE_LOCK", "WRITE_SYNC_SETTINGS",
})

# Benign request rates of the notable permissions (hand-set, summary level).
_PERM_RATE = {
    "INTERNET": 0.86, "ACCESS_NETWORK_STATE": 0.72, "WRITE_EXTERNAL_STORAGE": 0.5,
    "READ_EXTERNAL_STORAGE": 0.3, "WAKE_LOCK": 0.33, "VIBRATE": 0.22, "ACCESS_WIFI_STATE": 0.22,
    "RECEIVE_BOOT_COMPLETED": 0.2, "FOREGROUND_SERVICE": 0.25, "ACCESS_COARSE_LOCATION": 0.12,
    "ACCESS_FINE_LOCATION": 0.12, "CAMERA": 0.12, "READ_PHONE_STATE": 0.12, "GET_ACCOUNTS": 0.06,
    "BLUETOOTH": 0.07, "RECORD_AUDIO": 0.06, "READ_CONTACTS": 0.06, "CHANGE_WIFI_STATE": 0.06,
    "BLUETOOTH_ADMIN": 0.05, "MODIFY_AUDIO_SETTINGS": 0.05, "SYSTEM_ALERT_WINDOW": 0.04,
    "WRITE_SETTINGS": 0.04, "CALL_PHONE": 0.03, "USE_FINGERPRINT": 0.04, "USE_BIOMETRIC": 0.03,
    "NFC": 0.03, "CHANGE_NETWORK_STATE": 0.03, "REQUEST_IGNORE_BATTERY_OPTIMIZATIONS": 0.04,
    "REQUEST_INSTALL_PACKAGES": 0.04, "INSTALL_SHORTCUT": 0.03, "GET_TASKS": 0.03,
    "WRITE_CONTACTS": 0.025, "READ_SYNC_SETTINGS": 0.025, "WRITE_SYNC_SETTINGS": 0.025,
    "BIND_NOTIFICATION_LISTENER_SERVICE": 0.008, "SEND_SMS": 0.006, "RECEIVE_SMS": 0.006,
    "READ_SMS": 0.004, "READ_CALL_LOG": 0.004, "SET_WALLPAPER": 0.008, "KILL_BACKGROUND_PROCESSES": 0.008,
    "BROADCAST_STICKY": 0.008, "DISABLE_KEYGUARD": 0.006, "EXPAND_STATUS_BAR": 0.004,
    "READ_CALENDAR": 0.006, "WRITE_CALENDAR": 0.0048, "PACKAGE_USAGE_STATS": 0.006,
    "BIND_ACCESSIBILITY_SERVICE": 0.004, "BIND_DEVICE_ADMIN": 0.0016, "ACCESS_BACKGROUND_LOCATION": 0.04,
    "QUERY_ALL_PACKAGES": 0.04, "ACCESS_NOTIFICATION_POLICY": 0.006, "USE_FULL_SCREEN_INTENT": 0.006,
    "ACTIVITY_RECOGNITION": 0.006, "MANAGE_EXTERNAL_STORAGE": 0.004, "RECEIVE_MMS": 0.002,
    "RECEIVE_WAP_PUSH": 0.0016, "PROCESS_OUTGOING_CALLS": 0.0032, "MOUNT_UNMOUNT_FILESYSTEMS": 0.004,
    "WRITE_SECURE_SETTINGS": 0.0016, "INSTALL_PACKAGES": 0.008, "DELETE_PACKAGES": 0.002,
    "CHANGE_CONFIGURATION": 0.002, "READ_LOGS": 0.0032, "RESTART_PACKAGES": 0.0024, "SET_ALARM": 0.0032,
    "BIND_QUICK_SETTINGS_TILE": 0.008, "READ_PHONE_NUMBERS": 0.004, "ANSWER_PHONE_CALLS": 0.002,
    "BODY_SENSORS": 0.002, "USE_SIP": 0.0016, "REORDER_TASKS": 0.0024,
    "ACCESS_LOCATION_EXTRA_COMMANDS": 0.004, "BATTERY_STATS": 0.0024, "GET_PACKAGE_SIZE": 0.0024,
    "UNINSTALL_SHORTCUT": 0.004, "WRITE_APN_SETTINGS": 0.0008, "BIND_VPN_SERVICE": 0.0016,
    "BIND_INPUT_METHOD": 0.0016, "BIND_WALLPAPER": 0.0016, "BIND_APPWIDGET": 0.0012,
}
# Year an Android permission appeared: apps before it cannot request it.
_PERM_INTRO = {
    "ACCESS_BACKGROUND_LOCATION": 2019.7, "ACCESS_MEDIA_LOCATION": 2019.7, "ACTIVITY_RECOGNITION": 2019.7,
    "FOREGROUND_SERVICE": 2018.6, "USE_BIOMETRIC": 2018.6, "USE_FINGERPRINT": 2015.8,
    "REQUEST_IGNORE_BATTERY_OPTIMIZATIONS": 2015.8, "REQUEST_INSTALL_PACKAGES": 2017.6,
    "ANSWER_PHONE_CALLS": 2017.6, "READ_PHONE_NUMBERS": 2017.6, "QUERY_ALL_PACKAGES": 2020.5,
    "MANAGE_EXTERNAL_STORAGE": 2020.5, "USE_FULL_SCREEN_INTENT": 2019.7, "BIND_QUICK_SETTINGS_TILE": 2016.6,
    "ACCESS_NOTIFICATION_POLICY": 2015.8, "BIND_NOTIFICATION_LISTENER_SERVICE": 2013.5,
    "BIND_ACCESSIBILITY_SERVICE": 2011.8, "PACKAGE_USAGE_STATS": 2014.8, "BODY_SENSORS": 2014.5,
}
# Drift of the request log-odds per 6 years (everyone, benign and malware).
_PERM_DRIFT = {
    "READ_PHONE_STATE": -0.8, "GET_TASKS": -1.0, "READ_EXTERNAL_STORAGE": 1.0, "WRITE_EXTERNAL_STORAGE": 0.4,
    "WAKE_LOCK": 0.5, "INTERNET": 0.4, "ACCESS_NETWORK_STATE": 0.5, "RECEIVE_BOOT_COMPLETED": 0.4,
    "SEND_SMS": -0.7, "READ_SMS": -0.7, "RECEIVE_SMS": -0.5, "INSTALL_SHORTCUT": -0.5, "CAMERA": 0.5,
    "RECORD_AUDIO": 0.4, "BIND_ACCESSIBILITY_SERVICE": 0.8, "SYSTEM_ALERT_WINDOW": 0.6,
    "ACCESS_WIFI_STATE": 0.3, "VIBRATE": -0.3,
}

# Benign syscall profile: name -> (share of apps that call it, median count when called).
_SYSCALL_PROFILE = {
    "clock_gettime": (0.99, 800), "ioctl": (0.98, 170), "getuid32": (0.98, 100), "futex": (0.98, 80),
    "mmap2": (0.98, 50), "close": (0.97, 18), "writev": (0.97, 15), "read": (0.97, 12), "write": (0.97, 25),
    "gettimeofday": (0.96, 10), "prctl": (0.96, 15), "madvise": (0.96, 10), "SYS_305": (0.95, 13),
    "mprotect": (0.96, 16), "clone": (0.95, 3), "fstat64": (0.95, 28), "munmap": (0.9, 32),
    "SYS_329": (0.9, 40), "fcntl64": (0.9, 2), "pread": (0.88, 55), "getsockopt": (0.88, 1),
    "recvfrom": (0.85, 22), "dup": (0.82, 6), "epoll_ctl": (0.8, 3), "lseek": (0.78, 2),
    "rt_sigprocmask": (0.78, 15), "SYS_339": (0.75, 1), "SYS_340": (0.75, 1), "SYS_310": (0.66, 22),
    "SYS_317": (0.65, 6), "SYS_306": (0.45, 3), "SYS_316": (0.45, 2), "getdents64": (0.42, 2),
    "SYS_311": (0.33, 3), "SYS_315": (0.25, 5), "fsync": (0.24, 1), "_llseek": (0.21, 6),
    "sched_yield": (0.2, 1), "fstatfs64": (0.19, 4), "fdatasync": (0.18, 9), "getpid": (0.3, 4),
    "gettid": (0.28, 3), "epoll_pwait": (0.35, 20), "nanosleep": (0.25, 5), "rt_sigaction": (0.22, 4),
    "sigaltstack": (0.15, 2), "getpriority": (0.2, 2), "setpriority": (0.2, 2), "pipe2": (0.15, 2),
    "eventfd2": (0.12, 1), "sendto": (0.2, 6), "socket": (0.18, 3), "connect": (0.17, 3),
    "getsockname": (0.12, 2), "setsockopt": (0.15, 4), "sendmsg": (0.1, 3), "recvmsg": (0.12, 5),
    "faccessat": (0.15, 3), "fstatat64": (0.2, 6), "readlinkat": (0.08, 2), "mkdirat": (0.08, 1),
    "unlinkat": (0.1, 2), "renameat": (0.06, 1), "openat": (0.2, 8), "ftruncate64": (0.08, 1),
    "sched_getaffinity": (0.06, 1), "getrusage": (0.0088, 1), "ppoll": (0.1, 3), "pselect6": (0.007, 2),
    "rt_sigtimedwait": (0.007, 1), "exit": (0.1, 1), "exit_group": (0.0105, 1), "uname": (0.0175, 1),
    "sysinfo": (0.0105, 1), "inotify_init1": (0.0105, 1), "inotify_add_watch": (0.0105, 2), "getppid": (0.0105, 1),
    "execve": (0.0105, 1), "wait4": (0.0105, 1), "kill": (0.007, 1), "fchmodat": (0.0105, 1), "getrandom": (0.08, 1),
    "statfs64": (0.06, 2), "mremap": (0.06, 2), "msync": (0.0053, 1), "setsid": (0.0017, 1),
    "ptrace": (0.0007, 2), "mount": (0.0003, 1), "setuid32": (0.001, 1), "setresuid32": (0.001, 1),
    "vfork": (0.0017, 1), "chroot": (0.0002, 1), "symlinkat": (0.0017, 1), "tgkill": (0.0105, 1),
    "getcwd": (0.0105, 1), "umask": (0.007, 1), "accept4": (0.0035, 1), "bind": (0.007, 1), "listen": (0.0035, 1),
    "shutdown": (0.0088, 1), "socketpair": (0.007, 1), "getpeername": (0.0088, 1), "process_vm_readv": (0.0003, 1),
    "flock": (0.007, 1), "fchown32": (0.0018, 1), "fchmod": (0.0035, 1), "timerfd_create": (0.0035, 1),
    "clock_nanosleep": (0.0035, 2), "sched_setscheduler": (0.0053, 1), "sched_getscheduler": (0.007, 1),
    "sched_getparam": (0.007, 1),
}
# Per-call spread (log scale) of the counts of the syscalls that apps call in
# bulk (others: 0.6). On top of it, every count follows its app's activity level.
_HEAVY_SYSCALLS = {
    "read": 1.0, "write": 0.9, "ioctl": 0.9, "futex": 0.8, "mmap2": 0.7, "clock_gettime": 0.8,
    "gettimeofday": 1.0, "getuid32": 0.9, "mprotect": 0.8, "recvfrom": 0.9, "SYS_329": 0.9,
}
# Syscalls whose counts also follow the app's network activity.
_NETWORK_SYSCALLS = frozenset({
    "socket", "connect", "sendto", "recvfrom", "sendmsg", "recvmsg", "getsockopt", "setsockopt",
    "getsockname", "getpeername", "epoll_pwait", "epoll_ctl", "ppoll", "shutdown", "bind",
})

# Benign app archetypes: (name, benign weight, weight as a malware carrier,
# log median compressed size in 2014, mean activities, mean services,
# permission log-odds offsets, syscall offsets name -> (use log-odds, log count)).
_ARCHETYPES = (
    ("game", 0.24, 0.36, 15.6, 6, 1.5,
     {"VIBRATE": 1.0, "WAKE_LOCK": 0.6, "BLUETOOTH": 0.3, "GET_ACCOUNTS": 0.6, "ACCESS_WIFI_STATE": 0.5,
      "CAMERA": -1.0, "READ_CONTACTS": -1.0},
     {"futex": (0.5, 1.0), "ioctl": (0.5, 1.2), "sched_yield": (1.5, 1.0), "clock_gettime": (0, 1.0),
      "nanosleep": (1.0, 0.8), "mmap2": (0, 0.6), "madvise": (0, 0.6), "sched_getscheduler": (2.0, 0),
      "sched_setscheduler": (2.0, 0), "sched_getparam": (2.0, 0), "clock_nanosleep": (2.0, 0),
      "timerfd_create": (1.5, 0)}),
    ("social", 0.16, 0.10, 15.4, 18, 4.0,
     {"CAMERA": 1.5, "RECORD_AUDIO": 1.5, "READ_CONTACTS": 1.8, "WRITE_CONTACTS": 1.0, "GET_ACCOUNTS": 1.2,
      "ACCESS_FINE_LOCATION": 0.8, "VIBRATE": 0.8, "RECEIVE_BOOT_COMPLETED": 0.8, "FOREGROUND_SERVICE": 0.8,
      "READ_PHONE_STATE": 0.4, "USE_FINGERPRINT": 0.5},
     {"socket": (1.2, 0.5), "connect": (1.2, 0.5), "sendto": (1.0, 0.8), "recvfrom": (0.5, 1.0),
      "epoll_pwait": (1.0, 0.8), "getsockname": (1.0, 0), "setsockopt": (1.0, 0.5), "bind": (2.0, 0),
      "listen": (2.0, 0), "accept4": (2.0, 0), "shutdown": (1.5, 0), "getpeername": (1.5, 0),
      "socketpair": (1.5, 0), "pselect6": (1.5, 0)}),
    ("tool", 0.22, 0.30, 14.3, 4, 1.5,
     {"WRITE_EXTERNAL_STORAGE": 0.6, "READ_EXTERNAL_STORAGE": 0.6, "INTERNET": -1.0,
      "ACCESS_NETWORK_STATE": -0.8, "CAMERA": 0.5, "WRITE_SETTINGS": 1.0, "SYSTEM_ALERT_WINDOW": 0.6,
      "BIND_QUICK_SETTINGS_TILE": 1.0, "REQUEST_IGNORE_BATTERY_OPTIMIZATIONS": 0.6},
     {"getdents64": (1.0, 0.8), "fstatat64": (1.2, 0.8), "statfs64": (1.2, 0.5), "faccessat": (1.0, 0.5),
      "recvfrom": (-1.0, -0.5), "_llseek": (0.8, 0.5), "flock": (2.0, 0), "fchmod": (2.0, 0),
      "fchown32": (2.0, 0), "msync": (1.5, 0), "getrusage": (1.5, 0)}),
    ("media", 0.13, 0.10, 15.0, 8, 2.5,
     {"CAMERA": 2.0, "RECORD_AUDIO": 1.6, "READ_EXTERNAL_STORAGE": 1.2, "WRITE_EXTERNAL_STORAGE": 1.0,
      "WAKE_LOCK": 0.8, "FOREGROUND_SERVICE": 1.0, "MODIFY_AUDIO_SETTINGS": 1.5, "SET_WALLPAPER": 1.0},
     {"ioctl": (0, 1.5), "read": (0, 1.0), "write": (0, 0.8), "pread64": (1.5, 1.0), "mmap2": (0, 0.8),
      "fdatasync": (0.8, 0.5), "rt_sigtimedwait": (1.5, 0), "timerfd_create": (1.5, 0)}),
    ("business", 0.15, 0.05, 15.2, 14, 3.0,
     {"USE_FINGERPRINT": 1.5, "USE_BIOMETRIC": 1.5, "CAMERA": 0.8, "ACCESS_FINE_LOCATION": 0.4,
      "READ_CALENDAR": 1.0, "WRITE_CALENDAR": 1.0, "GET_ACCOUNTS": 0.8, "NFC": 0.8, "VIBRATE": 0.4},
     {"recvfrom": (0.5, 0.8), "sendto": (0.8, 0.5), "getsockopt": (0, 0.8), "read": (0, 0.5),
      "getrandom": (1.0, 0.5)}),
    ("news", 0.10, 0.09, 14.6, 7, 2.0,
     {"ACCESS_NETWORK_STATE": 0.8, "WAKE_LOCK": 0.4, "RECEIVE_BOOT_COMPLETED": 0.5, "VIBRATE": 0.3,
      "CAMERA": -1.0},
     {"recvfrom": (0.5, 1.0), "read": (0, 0.6), "epoll_pwait": (0.6, 0.5), "fsync": (0.5, 0.5)}),
)

# What every malware app does more of (scaled by its strength).
_MALWARE_COMMON_PERMS = {
    "READ_PHONE_STATE": 2.4, "ACCESS_NETWORK_STATE": 1.4, "ACCESS_WIFI_STATE": 1.4, "INTERNET": 1.8,
    "RECEIVE_BOOT_COMPLETED": 1.5, "GET_TASKS": 1.8, "WRITE_EXTERNAL_STORAGE": 0.8,
    "SYSTEM_ALERT_WINDOW": 1.2, "CHANGE_WIFI_STATE": 1.0, "READ_LOGS": 1.5, "MOUNT_UNMOUNT_FILESYSTEMS": 1.2,
    "WRITE_SETTINGS": 1.0, "KILL_BACKGROUND_PROCESSES": 1.0, "INSTALL_SHORTCUT": 1.0, "GET_ACCOUNTS": 0.6,
    "WRITE_APN_SETTINGS": 1.5, "CHANGE_NETWORK_STATE": 1.2, "RESTART_PACKAGES": 1.5, "DISABLE_KEYGUARD": 1.0,
    "CALL_PHONE": 1.0, "RECEIVE_SMS": 0.8, "EXPAND_STATUS_BAR": 1.0,
    "FOREGROUND_SERVICE": -0.8, "USE_FINGERPRINT": -1.0, "VIBRATE": -0.6, "CAMERA": -0.6, "BLUETOOTH": -0.5,
    "MODIFY_AUDIO_SETTINGS": -0.5, "RECORD_AUDIO": -0.3, "READ_EXTERNAL_STORAGE": -0.4, "WAKE_LOCK": -0.3,
}
_MALWARE_COMMON_SYSCALLS = {
    "execve": (4.0, 0.5), "wait4": (3.8, 0.3), "getppid": (3.5, 0), "kill": (3.2, 0), "uname": (3.2, 0),
    "fchmodat": (3.5, 0), "setsid": (3.0, 0), "inotify_init1": (3.0, 0), "inotify_add_watch": (3.0, 0.3),
    "sysinfo": (3.0, 0), "umask": (2.5, 0), "getcwd": (2.0, 0), "tgkill": (2.0, 0), "exit_group": (2.0, 0),
    "readlinkat": (1.5, 0), "vfork": (2.0, 0), "ptrace": (2.0, 0), "socket": (1.5, 0.5),
    "connect": (1.5, 0.5), "sendto": (1.3, 0.8), "recvfrom": (0.5, 0.8), "getdents64": (1.0, 0.5),
    "clone": (0.5, 1.0), "getpid": (0.8, 0.3), "openat": (0.8, 0.5), "faccessat": (0.8, 0.3),
    "futex": (0, -1.2), "clock_gettime": (0, -1.5), "ioctl": (0, -1.2), "madvise": (0, -1.0),
    "mmap2": (0, -0.8), "SYS_329": (-0.5, -0.8), "getuid32": (0, 1.2),
}
# Permissions that apps request together (an SDK's or a feature's set): a benign app that
# requests one of a bundle mostly requests the rest; malware requests them a la carte.
_PERM_BUNDLES = (
    ("INTERNET", "ACCESS_NETWORK_STATE", "ACCESS_WIFI_STATE"),
    ("READ_EXTERNAL_STORAGE", "WRITE_EXTERNAL_STORAGE"),
    ("ACCESS_COARSE_LOCATION", "ACCESS_FINE_LOCATION"),
    ("WAKE_LOCK", "RECEIVE_BOOT_COMPLETED", "VIBRATE", "FOREGROUND_SERVICE"),
    ("CAMERA", "RECORD_AUDIO", "MODIFY_AUDIO_SETTINGS"),
    ("READ_CONTACTS", "WRITE_CONTACTS", "GET_ACCOUNTS"),
    ("BLUETOOTH", "BLUETOOTH_ADMIN"),
    ("USE_FINGERPRINT", "USE_BIOMETRIC"),
    ("READ_CALENDAR", "WRITE_CALENDAR"),
    ("READ_SYNC_SETTINGS", "WRITE_SYNC_SETTINGS"),
    ("ACCESS_WIFI_STATE", "CHANGE_WIFI_STATE"),
    ("SEND_SMS", "RECEIVE_SMS", "READ_SMS"),
)
# The chance that a bundle's other members come along with one of them.
_BUNDLE_COMPLETION = {0: 0.92, 1: 0.15}
# How strongly the common malware syscalls show (their dynamic traces overlap benign apps').
_MALWARE_SYSCALL_GAIN = 0.5
# How strongly a family's behaviour shows, relative to the tables below.
_BEHAVIOUR_GAIN = 1.6
# Malware behaviours: name -> (subset category, permission offsets, syscall offsets
# name -> (use log-odds, log count), receivers boost, Detection_Ratio beta params).
_BEHAVIOURS = {
    "adware": ("Adware",
               {"ACCESS_COARSE_LOCATION": 1.5, "ACCESS_FINE_LOCATION": 0.8, "SYSTEM_ALERT_WINDOW": 1.5,
                "INSTALL_SHORTCUT": 2.0, "UNINSTALL_SHORTCUT": 2.0, "GET_ACCOUNTS": 0.8, "WAKE_LOCK": 0.5,
                "VIBRATE": 0.5, "READ_LOGS": 0.6},
               {"connect": (0.5, 0.8), "sendto": (0.5, 1.0), "recvfrom": (0, 0.8), "nanosleep": (0.8, 0.5),
                "epoll_pwait": (0.8, 0.5)},
               1.0, (2.0, 3.2)),
    "sms": ("Trojan-SMS",
            {"SEND_SMS": 4.0, "RECEIVE_SMS": 3.5, "READ_SMS": 3.0, "CALL_PHONE": 1.5, "RECEIVE_WAP_PUSH": 1.5,
             "RECEIVE_MMS": 1.0, "WRITE_APN_SETTINGS": 1.0},
            {"socket": (0.5, 0.5), "sendmsg": (1.0, 0.5), "recvmsg": (0.8, 0.5)},
            1.8, (3.0, 2.5)),
    "spyware": ("Trojan-Spy",
                {"READ_CONTACTS": 2.5, "READ_SMS": 2.0, "READ_CALL_LOG": 2.5, "RECORD_AUDIO": 1.8,
                 "ACCESS_FINE_LOCATION": 2.0, "CAMERA": 1.0, "PROCESS_OUTGOING_CALLS": 2.0, "GET_ACCOUNTS": 1.5,
                 "READ_CALENDAR": 1.0, "RECEIVE_SMS": 1.5},
                {"sendto": (1.0, 1.2), "connect": (0.8, 0.8), "getdents64": (0.5, 0.8), "fstatat64": (0.8, 0.8)},
                1.8, (2.6, 2.6)),
    "ransomware": ("Ransomware",
                   {"SYSTEM_ALERT_WINDOW": 3.0, "BIND_DEVICE_ADMIN": 3.0, "DISABLE_KEYGUARD": 2.0,
                    "KILL_BACKGROUND_PROCESSES": 1.5, "WAKE_LOCK": 1.5, "GET_TASKS": 1.5, "REORDER_TASKS": 1.5},
                   {"getdents64": (1.0, 2.0), "renameat": (2.5, 1.5), "unlinkat": (2.0, 1.0), "write": (0, 1.0),
                    "openat": (1.0, 1.0), "fstatat64": (1.0, 1.0)},
                   1.0, (3.0, 2.0)),
    "banker": ("Trojan-Banker",
               {"BIND_ACCESSIBILITY_SERVICE": 3.0, "SYSTEM_ALERT_WINDOW": 2.0, "RECEIVE_SMS": 2.5, "READ_SMS": 2.0,
                "SEND_SMS": 1.5, "PACKAGE_USAGE_STATS": 2.0, "BIND_DEVICE_ADMIN": 1.5,
                "REQUEST_IGNORE_BATTERY_OPTIMIZATIONS": 1.5, "FOREGROUND_SERVICE": 1.0, "GET_TASKS": 1.5},
               {"socket": (0.8, 0.5), "connect": (0.8, 0.8), "sendto": (0.5, 1.0), "process_vm_readv": (2.0, 0)},
               1.5, (2.8, 2.4)),
    "rooting": ("Trojan",
                {"INSTALL_PACKAGES": 2.5, "DELETE_PACKAGES": 2.0, "MOUNT_UNMOUNT_FILESYSTEMS": 2.0,
                 "CHANGE_WIFI_STATE": 1.5, "WRITE_SETTINGS": 1.0, "READ_LOGS": 1.5, "RESTART_PACKAGES": 1.5,
                 "WRITE_APN_SETTINGS": 1.5},
                {"ptrace": (3.0, 0.5), "setuid32": (2.5, 0), "setresuid32": (2.5, 0), "mount": (3.0, 0),
                 "chroot": (1.5, 0), "vfork": (2.0, 0.5), "execve": (1.5, 1.0), "symlinkat": (2.0, 0),
                 "wait4": (1.0, 0.8)},
                1.2, (3.2, 2.2)),
    "dropper": ("Trojan",
                {"INSTALL_PACKAGES": 1.5, "REQUEST_INSTALL_PACKAGES": 2.0, "SYSTEM_ALERT_WINDOW": 1.0,
                 "WRITE_SETTINGS": 0.8, "GET_TASKS": 1.0, "CHANGE_WIFI_STATE": 1.0},
                {"execve": (1.0, 0.5), "fchmodat": (1.0, 0.5), "unlinkat": (1.0, 0.5), "write": (0, 0.8),
                 "vfork": (1.0, 0)},
                1.0, (2.4, 2.8)),
    "riskware": ("Riskware",
                 {"READ_PHONE_STATE": 1.0, "ACCESS_COARSE_LOCATION": 0.8, "SEND_SMS": 1.0, "GET_ACCOUNTS": 0.5},
                 {"sendto": (0.3, 0.5)},
                 0.5, (1.4, 4.0)),
}
# ~60 families, most frequent first (Zipf-like weights by rank): (name, behaviour,
# centre of its active period as a fraction of the year range).
_FAMILIES = (
    ("Airpush", "adware", 0.45), ("Dowgin", "adware", 0.40), ("FakeInst", "sms", 0.25),
    ("Kuguo", "adware", 0.45), ("Leadbolt", "adware", 0.35), ("Opfake", "sms", 0.30),
    ("Hiddad", "adware", 0.75), ("SMSreg", "riskware", 0.50), ("Youmi", "adware", 0.35),
    ("MobiDash", "adware", 0.85), ("Agent", "dropper", 0.60), ("Boogr", "dropper", 0.90),
    ("Revmob", "adware", 0.50), ("Plankton", "adware", 0.30), ("DroidKungFu", "rooting", 0.20),
    ("Gappusin", "riskware", 0.40), ("BaseBridge", "rooting", 0.20), ("Triada", "dropper", 0.70),
    ("Joker", "sms", 0.95), ("Adwo", "adware", 0.35), ("Domob", "adware", 0.40),
    ("Wapsx", "riskware", 0.45), ("GingerMaster", "rooting", 0.25), ("Lotoor", "rooting", 0.45),
    ("SLocker", "ransomware", 0.75), ("Koler", "ransomware", 0.60), ("Simplocker", "ransomware", 0.60),
    ("Hqwar", "banker", 0.85), ("Anubis", "banker", 0.85), ("Marcher", "banker", 0.70),
    ("Svpeng", "banker", 0.65), ("Cerberus", "banker", 0.95), ("Faketoken", "banker", 0.65),
    ("Bankbot", "banker", 0.75), ("Smforw", "sms", 0.55), ("Boxer", "sms", 0.30),
    ("Geinimi", "spyware", 0.15), ("Kmin", "spyware", 0.20), ("ADRD", "spyware", 0.15),
    ("DroidDream", "rooting", 0.15), ("Zitmo", "banker", 0.30), ("Spitmo", "banker", 0.30),
    ("SpyNote", "spyware", 0.80), ("AhMyth", "spyware", 0.85), ("Dendroid", "spyware", 0.55),
    ("Xiny", "dropper", 0.65), ("Ztorg", "rooting", 0.70), ("Rootnik", "rooting", 0.60),
    ("HummingBad", "rooting", 0.65), ("Shedun", "adware", 0.60), ("Ewind", "adware", 0.75),
    ("Fobus", "sms", 0.60), ("Feiwo", "adware", 0.40), ("Skymobi", "riskware", 0.45),
    ("Jifake", "sms", 0.35), ("Fakeplayer", "sms", 0.10), ("Pjapps", "dropper", 0.15),
    ("Anserver", "dropper", 0.20), ("RuMMS", "sms", 0.65), ("Malap", "dropper", 0.90),
)

_TLDS = np.array(["com", "com", "com", "com", "org", "net", "cn", "io", "me", "de", "ru", "br", "in", "jp"])
_VENDORS = np.array([
    "acme", "alpha", "apps", "appstudio", "bluefox", "brightsoft", "cloudy", "codeworks", "coolapps",
    "devhouse", "dreamlab", "easysoft", "fastlane", "funbox", "gamehub", "greenleaf", "happyware",
    "hexa", "infinity", "kiwi", "lighthouse", "magicbit", "mobilab", "moonrise", "nextgen", "nova",
    "orbit", "pixel", "playful", "quantum", "redpanda", "rocket", "sapphire", "silverline", "skyline",
    "smartdev", "snapapps", "solid", "starlight", "sunny", "swift", "techno", "topapps", "urban",
    "vertex", "vivid", "wave", "wildcat", "yellowbird", "zenith", "mobile", "digital", "labs", "soft",
])
_APP_WORDS = np.array([
    "browser", "calculator", "calendar", "camera", "chat", "cleaner", "clock", "compass", "diary",
    "dictionary", "editor", "explorer", "fitness", "flashlight", "gallery", "keyboard", "launcher",
    "manager", "maps", "messenger", "music", "news", "notes", "photo", "player", "puzzle", "quiz",
    "radio", "reader", "recipes", "recorder", "scanner", "shop", "social", "solitaire", "sports",
    "translator", "travel", "tuner", "video", "wallet", "wallpaper", "weather", "widget", "runner",
    "racing", "battle", "farm", "city", "match3", "chess", "sudoku", "bank", "taxi", "food", "mail",
    "vpn", "booster", "battery", "radar", "tracker", "guide", "lite", "pro", "hd", "free",
])
_SYSTEM_LIKE = np.array([
    "com.android.system.update", "com.android.settings.service", "com.google.services.update",
    "com.android.provider.sync", "com.android.security.patch", "com.system.battery.optimizer",
    "com.android.tools.service", "com.google.play.update", "com.adobe.flash.player",
    "com.android.browser.plugin", "org.system.cleaner.master", "com.video.player.codec",
])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class _Model:
    perm_logit: np.ndarray  # (P,) benign base log-odds
    perm_intro_idx: np.ndarray
    perm_intro_year: np.ndarray
    perm_drift: np.ndarray  # (P,)
    perm_normal: np.ndarray  # (P,) bool
    perm_dangerous: np.ndarray
    arch_perm: np.ndarray  # (A, P)
    arch_sc_use: np.ndarray  # (A, S)
    arch_sc_cnt: np.ndarray  # (A, S)
    arch_weight_benign: np.ndarray
    arch_weight_malware: np.ndarray
    arch_size_mu: np.ndarray
    arch_activities: np.ndarray
    arch_services: np.ndarray
    mal_perm: np.ndarray  # (P,)
    mal_sc_use: np.ndarray  # (S,)
    mal_sc_cnt: np.ndarray
    beh_perm: np.ndarray  # (B, P)
    beh_sc_use: np.ndarray  # (B, S)
    beh_sc_cnt: np.ndarray
    beh_receivers: np.ndarray
    beh_detection: np.ndarray  # (B, 2)
    beh_category: np.ndarray  # (B,) str
    fam_names: np.ndarray
    fam_behaviour: np.ndarray
    fam_centre: np.ndarray
    fam_weight: np.ndarray
    sc_logit: np.ndarray  # (S,)
    sc_mu: np.ndarray
    sc_sigma: np.ndarray
    sc_network: np.ndarray  # (S,) 1.0 for network syscalls
    sc_new: np.ndarray  # (S,) bool: SYS_3xx and getrandom, more common in newer apps


def _vector(names: tuple[str, ...], values: dict, index: int | None = None) -> np.ndarray:
    pos = {n: i for i, n in enumerate(names)}
    out = np.zeros(len(names))
    for name, value in values.items():
        if name in pos:
            out[pos[name]] = value if index is None else value[index]
    return out


@lru_cache(maxsize=1)
def _model() -> _Model:
    fixed = np.random.default_rng(_MODEL_SEED)
    n_perm, n_sc = len(PERMISSIONS), len(SYSCALLS)

    # Permissions not listed: most are never requested, the rest rarely.
    rates = np.array([_PERM_RATE.get(p, np.nan) for p in PERMISSIONS])
    unlisted = np.isnan(rates)
    draws = fixed.random(n_perm)
    rare = 10 ** fixed.uniform(-4, np.log10(2e-3), n_perm)
    rates = np.where(unlisted, np.where(draws < 0.45, 0.0, rare), rates)
    perm_logit = np.where(rates > 0, _logit(rates), -30.0)

    sc_rates = np.array([_SYSCALL_PROFILE.get(s, (np.nan, 1))[0] for s in SYSCALLS])
    fallback_median = 1 + fixed.integers(0, 3, n_sc)
    sc_median = np.array([_SYSCALL_PROFILE[s][1] if s in _SYSCALL_PROFILE else fallback_median[i]
                          for i, s in enumerate(SYSCALLS)], float)
    unlisted = np.isnan(sc_rates)
    draws = fixed.random(n_sc)
    rare = 10 ** fixed.uniform(-4, np.log10(2e-3), n_sc)
    sc_rates = np.where(unlisted, np.where(draws < 0.75, 0.0, rare), sc_rates)
    sc_logit = np.where(sc_rates > 0, _logit(sc_rates), -30.0)
    sc_sigma = np.array([_HEAVY_SYSCALLS.get(s, 0.6) for s in SYSCALLS])
    sc_network = np.array([s in _NETWORK_SYSCALLS for s in SYSCALLS], dtype=float)
    sc_new = np.array([s.startswith("SYS_3") or s == "getrandom" for s in SYSCALLS])

    intro = [(i, _PERM_INTRO[p]) for i, p in enumerate(PERMISSIONS) if p in _PERM_INTRO]

    def sc_table(rows, item):
        return np.stack([_vector(SYSCALLS, r, item) for r in rows])

    beh_names = list(_BEHAVIOURS)
    fam_behaviour = np.array([beh_names.index(b) for _, b, _ in _FAMILIES])
    weights = 1.0 / np.arange(1, len(_FAMILIES) + 1) ** 1.05
    return _Model(
        perm_logit=perm_logit,
        perm_intro_idx=np.array([i for i, _ in intro], dtype=np.int64),
        perm_intro_year=np.array([y for _, y in intro]),
        perm_drift=_vector(PERMISSIONS, _PERM_DRIFT),
        perm_normal=np.array([p in _NORMAL for p in PERMISSIONS]),
        perm_dangerous=np.array([p in _DANGEROUS for p in PERMISSIONS]),
        arch_perm=np.stack([_vector(PERMISSIONS, a[6]) for a in _ARCHETYPES]),
        arch_sc_use=sc_table([a[7] for a in _ARCHETYPES], 0),
        arch_sc_cnt=sc_table([a[7] for a in _ARCHETYPES], 1),
        arch_weight_benign=np.array([a[1] for a in _ARCHETYPES]) / sum(a[1] for a in _ARCHETYPES),
        arch_weight_malware=np.array([a[2] for a in _ARCHETYPES]) / sum(a[2] for a in _ARCHETYPES),
        arch_size_mu=np.array([a[3] for a in _ARCHETYPES]),
        arch_activities=np.array([a[4] for a in _ARCHETYPES], float),
        arch_services=np.array([a[5] for a in _ARCHETYPES], float),
        mal_perm=_vector(PERMISSIONS, _MALWARE_COMMON_PERMS),
        mal_sc_use=_MALWARE_SYSCALL_GAIN * _vector(SYSCALLS, _MALWARE_COMMON_SYSCALLS, 0),
        mal_sc_cnt=_vector(SYSCALLS, _MALWARE_COMMON_SYSCALLS, 1),
        beh_perm=_BEHAVIOUR_GAIN * np.stack([_vector(PERMISSIONS, b[1]) for b in _BEHAVIOURS.values()]),
        beh_sc_use=_BEHAVIOUR_GAIN * sc_table([b[2] for b in _BEHAVIOURS.values()], 0),
        beh_sc_cnt=_BEHAVIOUR_GAIN * sc_table([b[2] for b in _BEHAVIOURS.values()], 1),
        beh_receivers=np.array([b[3] for b in _BEHAVIOURS.values()]),
        beh_detection=np.array([b[4] for b in _BEHAVIOURS.values()]),
        beh_category=np.array([b[0] for b in _BEHAVIOURS.values()]),
        fam_names=np.array([f[0] for f in _FAMILIES]),
        fam_behaviour=fam_behaviour,
        fam_centre=np.array([f[2] for f in _FAMILIES]),
        fam_weight=weights / weights.sum(),
        sc_logit=sc_logit,
        sc_mu=np.log(sc_median),
        sc_sigma=sc_sigma,
        sc_network=sc_network,
        sc_new=sc_new,
    )


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _bundle_indices() -> tuple[np.ndarray, ...]:
    pos = {p: i for i, p in enumerate(PERMISSIONS)}
    return tuple(np.array([pos[p] for p in bundle if p in pos]) for bundle in _PERM_BUNDLES)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _hex(rng: np.random.Generator, n: int, nbytes: int) -> np.ndarray:
    table = np.array([f"{i:02x}" for i in range(256)], dtype="<U2")
    digits = table[rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)]
    return np.ascontiguousarray(digits).view(f"<U{2 * nbytes}").ravel()


def _letters(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    codes = rng.integers(ord("a"), ord("z") + 1, size=(n, k), dtype=np.uint32)
    return np.ascontiguousarray(codes).view(f"<U{k}").ravel()


def _neg_binomial(rng: np.random.Generator, mean: np.ndarray, dispersion: float) -> np.ndarray:
    mean = np.maximum(mean, 1e-6)
    return rng.negative_binomial(dispersion, dispersion / (dispersion + mean))


def _format_datetimes(seconds: np.ndarray) -> np.ndarray:
    text = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s")
    return np.char.replace(text, "T", " ") if len(text) else text


def _sample(rng: np.random.Generator, n: int, data_source: str, label: int,
            start_year: int, end_year: int) -> dict[str, np.ndarray]:
    """``n`` rows of one (data source, label): every raw column, plus private
    ``_earliest``/``_latest`` (formatted, with sentinels), ``_latest_true``
    (datetime64, never a sentinel) and ``_category``."""
    m = _model()
    malware = label == 1
    n_arch = len(_ARCHETYPES)

    # Who the app is.
    arch = rng.choice(n_arch, size=n, p=m.arch_weight_malware if malware else m.arch_weight_benign)
    if malware:
        fam = rng.choice(len(m.fam_names), size=n, p=m.fam_weight)
        beh = m.fam_behaviour[fam]
        strength = 0.15 + 1.3 * rng.beta(4.0, 1.5, size=n)
    else:
        fam = beh = np.zeros(n, dtype=np.int64)
        strength = np.zeros(n)

    # When: benign skews recent, malware follows its family's active period.
    start = np.datetime64(f"{start_year:04d}-01-01T00:00:00", "s").astype(np.int64)
    total_days = (date(end_year, 12, 31) - date(start_year, 1, 1)).days + 1
    if malware:
        frac = np.clip(m.fam_centre[fam] + rng.normal(0.0, 0.16, size=n), 0.0, 1.0)
    else:
        frac = rng.beta(2.0, 1.3, size=n)
    day = np.minimum((frac * total_days).astype(np.int64), total_days - 1)
    latest = start + day * 86400 + rng.integers(0, 86400, size=n)
    gap = np.where(rng.random(n) < 0.3, 0, rng.exponential(150.0, size=n) * 86400).astype(np.int64)
    earliest = np.maximum(latest - gap - rng.integers(0, 3600, size=n), start)
    earliest = np.minimum(earliest, latest)
    latest_dt = latest.astype("datetime64[s]")
    year_start = latest_dt.astype("datetime64[Y]").astype("datetime64[s]").astype(np.int64)
    year_f = latest_dt.astype("datetime64[Y]").astype(np.int64) + 1970 + (latest - year_start) / (365.25 * 86400)
    t = (year_f - 2014.0) / 6.0  # drift clock

    # Permissions.
    hunger = rng.normal(0.3 if malware else -1.1, 1.1 if malware else 1.0, size=n)
    logit = m.perm_logit[None, :] + m.arch_perm[arch] + m.perm_drift[None, :] * t[:, None] + hunger[:, None]
    if malware:
        logit += strength[:, None] * (m.mal_perm[None, :] + m.beh_perm[beh])
    logit[:, m.perm_intro_idx] += np.log(_sigmoid((year_f[:, None] - m.perm_intro_year[None, :]) * 2.5))
    perms = rng.random((n, len(PERMISSIONS)), dtype=np.float32) < _sigmoid(logit).astype(np.float32)
    exists = np.ones_like(perms)  # a permission that Android did not have yet never joins
    exists[:, m.perm_intro_idx] = year_f[:, None] >= m.perm_intro_year[None, :]
    for members in _bundle_indices():
        has_one = perms[:, members].any(axis=1)
        joins = (rng.random((n, len(members))) < _BUNDLE_COMPLETION[label]) & exists[:, members]
        perms[:, members] |= has_one[:, None] & joins
    perms_i = perms.astype(np.int64)

    nr_permissions = perms_i.sum(axis=1)
    normal = perms_i[:, m.perm_normal].sum(axis=1)
    dangerous = perms_i[:, m.perm_dangerous].sum(axis=1)
    signature = nr_permissions - normal - dangerous
    custom_yes = (rng.random(n) < (0.45 if malware else 0.33)).astype(np.int64)
    nr_custom = np.where(custom_yes == 1, rng.geometric(0.5, size=n), 0)
    total_perm = nr_permissions + nr_custom

    # Syscalls: which ones, then how often (log-normal, heavy tailed).
    source_shift = np.where(m.sc_new, -0.5 if data_source == schema.EMULATOR else 0.3, 0.0)
    use_logit = (m.sc_logit[None, :] + m.arch_sc_use[arch] + source_shift[None, :]
                 + (m.sc_new * 0.8)[None, :] * t[:, None] + rng.normal(0.0, 0.3, size=n)[:, None])
    if malware:
        use_logit += strength[:, None] * (m.mal_sc_use[None, :] + m.beh_sc_use[beh])
    used = rng.random((n, len(SYSCALLS)), dtype=np.float32) < _sigmoid(use_logit).astype(np.float32)
    no_calls = rng.random(n) < NO_SYSCALL_RATE[data_source]
    if n >= 100 and not no_calls.any():
        no_calls[rng.integers(0, n)] = True
    used[no_calls] = False
    rows, cols = np.nonzero(used)
    activity = rng.normal(0.0, 0.9, size=n) + (0.0 if data_source == schema.REAL_DEVICE else -0.3)
    network = rng.normal(0.0, 0.7, size=n)
    log_count = (m.sc_mu[cols] + activity[rows] + network[rows] * m.sc_network[cols]
                 + m.arch_sc_cnt[arch[rows], cols] + m.sc_sigma[cols] * rng.standard_normal(len(rows)))
    if malware:
        log_count += strength[rows] * (m.mal_sc_cnt[cols] + m.beh_sc_cnt[beh[rows], cols])
    counts = np.clip(np.floor(np.exp(log_count)), 1, MAX_SYSCALL_COUNT).astype(np.int64)
    syscalls = np.zeros((n, len(SYSCALLS)), dtype=np.int64)
    syscalls[rows, cols] = counts

    # APK metadata. A benign app's components grow with its size (one "complexity" per app);
    # malware's do not (many receivers and services whatever its size), and it has few files
    # for its size and few VirusTotal submissions.
    size_mu = m.arch_size_mu[arch] + 0.12 * (year_f - 2014.0) - (0.2 * strength if malware else 0.0)
    size_noise = rng.normal(0.0, 1.0, size=n)
    c_size = np.exp(size_mu + (1.2 if malware else 1.0) * size_noise)
    c_size = np.clip(c_size, 1e4, 1.5e8).astype(np.int64)
    # Packed or encrypted payloads compress badly: malware's uncompressed size is closer to its compressed one.
    u_size = (c_size * (1.0 + np.exp(rng.normal(-1.0 if malware else -0.35, 0.5, size=n)))).astype(np.int64) + 1
    complexity = rng.normal(0.0, 1.0, size=n) if malware else 0.8 * size_noise + 0.6 * rng.normal(0.0, 1.0, size=n)
    scale = np.exp(0.6 * complexity)
    # Later apps pack their code into fewer, larger files, and benign apps are submitted to
    # VirusTotal less often the newer they are: the two strongest metadata columns drift, so a
    # model trained on earlier apps meets later ones closer to malware (a time split is harder).
    files_inside = np.exp(0.55 * np.log(c_size) - 2.3 - 0.2 * (year_f - 2014.0)
                          + rng.normal(0.0, 0.5, size=n)) * (0.5 if malware else 1.0)
    files_inside = np.clip(files_inside, 10, 5000).astype(np.int64)
    submitted_mu = 0.65 if malware else 2.95 - 0.15 * (year_f - 2014.0)
    submitted = np.exp(submitted_mu + (0.6 if malware else 0.9) * rng.standard_normal(n))
    submitted = np.clip(np.round(submitted), 1, 100).astype(np.int64)
    contacted = np.where(rng.random(n) < (0.12 if malware else 0.05), 1 + rng.poisson(3.0, size=n), 0)
    activities = 1 + _neg_binomial(rng, scale * m.arch_activities[arch] * (1.0 + 0.8 * strength) - 1, 1.2)
    int_activities = np.minimum(activities, 1 + rng.poisson(scale * (0.6 + 0.8 * strength)))
    int_activities_actions = int_activities + rng.poisson(0.5 * int_activities)
    services = _neg_binomial(rng, scale * m.arch_services[arch] * (1.0 + 1.2 * strength), 1.0)
    int_services = rng.binomial(services, 0.25 + 0.2 * np.minimum(strength, 1.0))
    int_services_actions = int_services + rng.poisson(0.3 * int_services)
    receivers_mean = scale * 0.6 + (m.beh_receivers[beh] * strength if malware else 0.0)
    int_receivers = rng.poisson(receivers_mean, size=n)
    int_receivers_actions = int_receivers + rng.poisson(1.5 * int_receivers)
    intent_filters = int_services + int_activities + int_receivers + rng.poisson(0.4, size=n)

    # VirusTotal outcome.
    scanners = np.clip(np.round(59 + 6 * np.clip((year_f - 2008) / 12, 0, 1) + rng.normal(0, 1.5, size=n)), 55, 70)
    scanners = scanners.astype(np.int64)
    if malware:
        a, b = m.beh_detection[beh].T
        detected = np.clip(np.round(rng.beta(a, b) * scanners * 0.95), 1, scanners).astype(np.int64)
    else:
        detected = np.where(rng.random(n) < 0.03, rng.integers(1, 3, size=n), 0)
    ratio = detected / scanners
    ratio_text = np.array(["0.0" if r == 0 else f"{r:.9g}" for r in ratio.tolist()], dtype=object)

    # Identity strings.
    sha = _hex(rng, n, 32)
    tld, vendor, word = (rng.choice(_TLDS, n), rng.choice(_VENDORS, n), rng.choice(_APP_WORDS, n))
    package = np.char.add(np.char.add(np.char.add(np.char.add(tld, "."), vendor), "."), word)
    if malware:
        kind = rng.random(n)
        random_name = np.char.add(np.char.add("com.", _letters(rng, n, 5)), np.char.add(".", _letters(rng, n, 6)))
        system_like = rng.choice(_SYSTEM_LIKE, n)
        package = np.where(kind < 0.3, random_name, np.where(kind < 0.45, system_like, package))
    package = np.char.add(package, "\n").astype(object)
    family = m.fam_names[fam].astype(object) if malware else np.full(n, "", dtype=object)
    category = m.beh_category[beh].astype(object) if malware else np.full(n, "Benign", dtype=object)

    # Dates as written: some unknown (sentinel).
    u = rng.random(n)
    earliest_text = _format_datetimes(earliest).astype(object)
    latest_text = _format_datetimes(latest).astype(object)
    earliest_text[u < SENTINEL_BOTH + SENTINEL_EARLIEST_ONLY] = SENTINEL_DATETIME
    latest_text[u < SENTINEL_BOTH] = SENTINEL_DATETIME

    out: dict[str, np.ndarray] = {
        schema.PACKAGE: package,
        schema.LABEL: np.full(n, label, dtype=np.int64),
    }
    out.update(zip(SYSCALLS, syscalls.T))
    out["nr_syscalls"] = syscalls.sum(axis=1)
    out.update(zip(PERMISSIONS, perms_i.T))
    out.update({
        "nr_permissions": nr_permissions, "normal": normal, "dangerous": dangerous, "signature": signature,
        "custom_yes": custom_yes, "nr_custom": nr_custom, "total_perm": total_perm,
        schema.SHA256: sha.astype(object),
        "CFileSize": c_size, "UFileSize": u_size, "FilesInsideAPK": files_inside, "TimesSubmitted": submitted,
        "NrContactedIps": contacted, "Activities": activities, "NrIntServices": int_services,
        "NrIntServicesActions": int_services_actions, "NrIntActivities": int_activities,
        "NrIntActivitiesActions": int_activities_actions, "NrIntReceivers": int_receivers,
        "NrIntReceiversActions": int_receivers_actions, "TotalIntentFilters": intent_filters,
        "NrServices": services, "Scanners": scanners, "Detection_Ratio": ratio_text, schema.FAMILY: family,
        "_earliest": earliest_text, "_latest": latest_text, "_latest_true": latest_dt, "_category": category,
    })
    return out


# Columns a conflicting-label twin shares with its original (the same APK):
# identity, static features and dates; its dynamic run and verdict are its own.
_TWIN_COLUMNS = (
    schema.PACKAGE, schema.SHA256, *PERMISSIONS, *schema.STATIC_AGGREGATES, *schema.APK_METADATA,
    "_earliest", "_latest", "_latest_true",
)


def _copy_row(sample: dict[str, np.ndarray], dst_row: int, src_row: int) -> None:
    for values in sample.values():
        values[dst_row] = values[src_row]


def _chunks(rng: np.random.Generator, n: int, data_source: str, label: int, start_year: int, end_year: int):
    for first in range(0, n, CHUNK_ROWS):
        yield _sample(rng, min(CHUNK_ROWS, n - first), data_source, label, start_year, end_year)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _frame(sample: dict[str, np.ndarray], columns: tuple[str, ...], data_source: str | None) -> pd.DataFrame:
    data = {}
    renames = dict(zip(("_earliest", "_latest"), DATE_PAIRS[data_source])) if data_source else {}
    inverse = {v: k for k, v in renames.items()}
    for column in columns:
        data[column] = sample[inverse.get(column, column)]
    return pd.DataFrame(data, columns=list(columns), copy=False)


def _write_csv(handle, frames, columns: tuple[str, ...], line_terminator: str) -> int:
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="", write_through=True)
    rows = 0
    header = True
    for frame in frames:
        frame.to_csv(text, index=False, header=header, lineterminator=line_terminator)
        header = False
        rows += len(frame)
    if header:  # no rows at all: still a header
        pd.DataFrame(columns=list(columns)).to_csv(text, index=False, lineterminator=line_terminator)
    text.flush()
    text.detach()
    return rows


def _write_zip(path: Path, member: str, frames, columns: tuple[str, ...], n_rows: int) -> int:
    info = zipfile.ZipInfo(member, date_time=ZIP_DATE_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = 0o644 << 16
    tmp = path.with_name(path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            with archive.open(info, "w", force_zip64=n_rows > 1_000_000) as handle:
                rows = _write_csv(handle, frames, columns, ARCHIVE_LINE_TERMINATOR)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def _duplicate_plan(rng: np.random.Generator, n_legit: int, n_malware: int) -> dict | None:
    """Rows to overwrite so a sub-dataset holds 2 exact-duplicate groups (one in
    each archive) and 2 sha256 values with conflicting labels. All chosen rows
    lie in the first chunk of each archive."""
    if n_legit + n_malware < MIN_ROWS_FOR_DUPLICATES or min(n_legit, n_malware) < 4:
        return None
    legit = rng.choice(min(n_legit, CHUNK_ROWS), size=4, replace=False)
    malware = rng.choice(min(n_malware, CHUNK_ROWS), size=4, replace=False)
    return {
        "legit_exact": (int(legit[0]), int(legit[1])),      # (source, copy)
        "malware_exact": (int(malware[0]), int(malware[1])),
        "conflicts": [(int(legit[2]), int(malware[2])), (int(legit[3]), int(malware[3]))],
    }


def _archive_frames(archive: Archive, n: int, seed: int, start_year: int, end_year: int, plan: dict | None,
                    twins: dict):
    """Frames of one archive; applies the duplicate plan to its first chunk.
    For a legitimate archive it records the rows its malware twin copies."""
    rng = np.random.default_rng([seed, archive.stream])
    columns = archive_columns(archive.data_source, archive.label)
    for i, sample in enumerate(_chunks(rng, n, archive.data_source, archive.label, start_year, end_year)):
        if i == 0 and plan is not None:
            src, dst = plan["malware_exact" if archive.label else "legit_exact"]
            _copy_row(sample, dst, src)
            for legit_row, malware_row in plan["conflicts"]:
                if archive.label == 0:
                    twins[legit_row] = {c: sample[c][legit_row] for c in _TWIN_COLUMNS}
                else:
                    for column in _TWIN_COLUMNS:
                        sample[column][malware_row] = twins[legit_row][column]
        yield _frame(sample, columns, archive.data_source)


def _generate_archives(out_dir: Path, rows: int, seed: int, start_year: int, end_year: int) -> dict[str, int]:
    counts = split_rows(rows)
    files: dict[str, int] = {}
    for source_index, source in enumerate(schema.DATA_SOURCES):
        pair = [(a, c) for a, c in zip(ARCHIVES, counts) if a.data_source == source]
        (legit, n_legit), (malware, n_malware) = sorted(pair, key=lambda item: item[0].label)
        plan = _duplicate_plan(np.random.default_rng([seed, 100 + source_index]), n_legit, n_malware)
        twins: dict[int, dict] = {}
        for archive, n in ((legit, n_legit), (malware, n_malware)):
            path = out_dir / archive.relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            frames = _archive_frames(archive, n, seed, start_year, end_year, plan, twins)
            columns = archive_columns(archive.data_source, archive.label)
            files[archive.relpath] = _write_zip(path, archive.member, frames, columns, n)
    return {a.relpath: files[a.relpath] for a in ARCHIVES}


def _subset_frames(rows: int, seed: int, start_year: int, end_year: int):
    legit, malware = (a for a in ARCHIVES if a.data_source == schema.REAL_DEVICE)
    n_legit, n_malware = split_rows(rows, (legit.real_rows, malware.real_rows)) if rows >= 2 else (rows, 0)
    rng_legit = np.random.default_rng([seed, legit.stream])
    rng_malware = np.random.default_rng([seed, malware.stream])
    rng_order = np.random.default_rng([seed, 200])
    columns = subset_columns()
    for first in range(0, rows, CHUNK_ROWS):
        last = min(rows, first + CHUNK_ROWS)
        k_mal = (n_malware * last) // rows - (n_malware * first) // rows
        parts = [
            _sample(rng_legit, last - first - k_mal, schema.REAL_DEVICE, 0, start_year, end_year),
            _sample(rng_malware, k_mal, schema.REAL_DEVICE, 1, start_year, end_year),
        ]
        sample = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
        order = rng_order.permutation(last - first)
        sample = {c: v[order] for c, v in sample.items()}
        # The subset format's own columns: a plain date, its month, its year;
        # this format has no sentinel dates.
        day = sample["_latest_true"].astype("datetime64[D]")
        sample["Categories"] = sample["_category"]
        sample["Highest-date"] = np.datetime_as_string(day, unit="D").astype(object)
        sample["year_month"] = np.datetime_as_string(day.astype("datetime64[M]"), unit="D").astype(object)
        sample["Year"] = day.astype("datetime64[Y]").astype(np.int64) + 1970
        yield _frame(sample, columns, None)


def _generate_subset(out_dir: Path, rows: int, seed: int, start_year: int, end_year: int) -> dict[str, int]:
    path = out_dir / SUBSET_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            frames = _subset_frames(rows, seed, start_year, end_year)
            written = _write_csv(handle, frames, subset_columns(), SUBSET_LINE_TERMINATOR)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {SUBSET_RELPATH: written}


def generate(out_dir: Path, rows: int, seed: int = 0, *, layout: str = "archives",
             start_year: int = 2008, end_year: int = 2020) -> dict:
    """Write ``rows`` synthetic KronoDroid rows under ``out_dir`` and a
    ``GENERATED.json`` marker; return the marker's content.

    ``layout="archives"``: the four KronoDroid zip archives (one CSV member each),
    ``rows`` divided in the real proportions. ``layout="subset"``: one CSV in
    the format of the public real-device subset. Same arguments, same bytes.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 0:
        raise ValueError(f"rows must be a non-negative integer, got {rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (1980 < start_year <= end_year < 2100):
        # After 1980: 1980-01-01 is the "unknown date" sentinel.
        raise ValueError(f"need 1980 < start_year <= end_year < 2100, got {start_year}..{end_year}")
    rows, seed = int(rows), int(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if layout == "archives":
        files = _generate_archives(out_dir, rows, seed, start_year, end_year)
    else:
        files = _generate_subset(out_dir, rows, seed, start_year, end_year)
    marker = {
        "generator": GENERATOR_NAME, "synthetic": True, "seed": seed, "rows": rows, "layout": layout,
        "files": files, "version": VERSION,
    }
    (out_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return marker
