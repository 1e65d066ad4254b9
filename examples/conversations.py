"""A private channel, an invitation, a reply in a thread, a reaction and the live events they make:
`python examples/conversations.py alice bob` (two existing accounts)."""

from two_people import DATA_DIR, password, run

from parley_client import ClientConfig, ParleyClient


async def main(alice_name: str, bob_name: str) -> None:
    config = ClientConfig.from_data_dir(DATA_DIR)
    async with ParleyClient.from_config(config) as alice, ParleyClient.from_config(config) as bob:
        await alice.login(alice_name, password(alice_name))
        await bob.login(bob_name, password(bob_name))
        room = await alice.create_channel("design", private=True)
        assert bob.user_id is not None  # known once bob logged in; alice could not find it by name yet
        await alice.invite(room.channel_id, bob.user_id)
        await bob.join_channel(room.channel_id)
        print("bob's id, found by name now that they share a channel:", await alice.find_user(bob_name))

        root = await alice.send(room.channel_id, "lunch?")
        await bob.reply(room.channel_id, root.channel_seq, "12:30 at the usual place")
        await bob.react(room.channel_id, root.channel_seq, ":thumbs_up:")
        # The channel's live events from its first one (position 0); `live` reconnects and resumes by itself.
        async for event in alice.live([room.channel_id], resume={room.channel_id: 0}):
            if event.kind == "membership":
                print("membership:", event.event.membership.change)
            elif event.kind == "message":
                print(f"#{event.message.channel_seq}: {event.message.body}")
            elif event.kind == "reaction":
                print("reaction:", event.event.reaction.emoji)
                break


if __name__ == "__main__":
    run(main)
