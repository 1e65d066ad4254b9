"""An end-to-end encrypted channel: the server relays ciphertext only, bob's device decrypts it.
`python examples/e2ee.py alice bob`; each one's device is kept in the data folder across runs."""

from two_people import DATA_DIR, password, run

from parley_client import ClientConfig, DeviceStore, ParleyClient


async def main(alice_name: str, bob_name: str) -> None:
    config = ClientConfig.from_data_dir(DATA_DIR)
    devices = DATA_DIR / "examples"
    devices.mkdir(mode=0o700, exist_ok=True)
    async with ParleyClient.from_config(config) as alice, ParleyClient.from_config(config) as bob:
        await alice.login(alice_name, password(alice_name))
        await bob.login(bob_name, password(bob_name))
        await alice.enable_e2ee(store=DeviceStore(devices / f"{alice_name}.device.json"))
        await bob.enable_e2ee(store=DeviceStore(devices / f"{bob_name}.device.json"))  # kept across restarts
        room = await alice.create_channel("secret", encrypted=True)
        await bob.join_channel(room.channel_id)
        sent = await alice.send(room.channel_id, "the merger closes friday")  # body is ciphertext
        print("the server holds:", sent.body[:40], "...")
        print("bob reads:", await bob.read(sent))  # plaintext, on bob's device


if __name__ == "__main__":
    run(main)
