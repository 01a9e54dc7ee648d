"""Checks the emulated BlueZ with bleak, a BlueZ client written independently of btleplug.

Usage: fidelity.py ADDRESS
Scans with a Heart Rate service filter, connects, reads Device Information and Current Time,
subscribes to Heart Rate Measurement, waits for two notifications and disconnects. Prints one
JSON object with what it saw; exits non-zero on any failure.
"""

import asyncio
import json
import sys

from bleak import BleakClient, BleakScanner

HR_SERVICE = "0000180d-0000-1000-8000-00805f9b34fb"
HR_MEASUREMENT = "00002a37-0000-1000-8000-00805f9b34fb"
MANUFACTURER = "00002a29-0000-1000-8000-00805f9b34fb"
MODEL = "00002a24-0000-1000-8000-00805f9b34fb"
CURRENT_TIME = "00002a2b-0000-1000-8000-00805f9b34fb"


async def main(address: str) -> dict:
    device = await BleakScanner.find_device_by_address(
        address, timeout=10.0, service_uuids=[HR_SERVICE]
    )
    if device is None:
        raise SystemExit(f"{address} not found by the scan")
    seen = []
    got_two = asyncio.Event()

    def on_notify(_char, data: bytearray) -> None:
        seen.append(data.hex())
        if len(seen) >= 2:
            got_two.set()

    async with BleakClient(device) as client:
        services = sorted(s.uuid for s in client.services)
        manufacturer = (await client.read_gatt_char(MANUFACTURER)).decode()
        model = (await client.read_gatt_char(MODEL)).decode()
        current_time = (await client.read_gatt_char(CURRENT_TIME)).hex()
        await client.start_notify(HR_MEASUREMENT, on_notify)
        await asyncio.wait_for(got_two.wait(), timeout=10.0)
        await client.stop_notify(HR_MEASUREMENT)
    return {
        "address": device.address,
        "name": device.name,
        "services": services,
        "manufacturer": manufacturer,
        "model": model,
        "current_time": current_time,
        "notifications": seen,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
