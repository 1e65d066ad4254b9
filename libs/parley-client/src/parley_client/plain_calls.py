"""The gateway's plain calls as the client offers them: one request built, one answer picked.

Each entry is a request builder (its signature and docstring are the client method's) under
`@rpc(<Gateway method>, <answer>)`. Calls that add behaviour (logins that keep tokens, sends
that encrypt, history that decrypts, live streams, paged or batched reads) are in client.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from parley.auth.v1 import auth_pb2
from parley.auth.v1.events_pb2 import UploadedOneTimeKey
from parley.messaging.v1 import messaging_pb2
from parley.messaging.v1.events_pb2 import ToDeviceSent

from parley_client.rpc import items, nothing, one, rpc, whole
from parley_client.session import GatewaySession

Channel = messaging_pb2.Channel


class PlainCalls(GatewaySession):
    # --- accounts ------------------------------------------------------------------------------

    @rpc("Register", whole(auth_pb2.UserName))
    @staticmethod
    def register(username: str, password: str, *, invite_code: str = "") -> auth_pb2.RegisterRequest:
        """`invite_code`: needed when the platform registers by invitation (PARLEY_REGISTRATION=invite)."""
        return auth_pb2.RegisterRequest(username=username, password=password, invite_code=invite_code)

    @rpc("ChangePassword", nothing)
    @staticmethod
    def change_password(current_password: str, new_password: str) -> auth_pb2.ChangePasswordRequest:
        return auth_pb2.ChangePasswordRequest(current_password=current_password, new_password=new_password)

    @rpc("BeginTotpEnrolment", whole(auth_pb2.BeginTotpEnrolmentResponse))
    @staticmethod
    def begin_totp_enrolment() -> auth_pb2.BeginTotpEnrolmentRequest:
        """The otpauth URI (and its secret) for an authenticator app; confirm with a code from it."""
        return auth_pb2.BeginTotpEnrolmentRequest()

    @rpc("ConfirmTotpEnrolment", items("recovery_codes", str))
    @staticmethod
    def confirm_totp_enrolment(totp_code: str) -> auth_pb2.ConfirmTotpEnrolmentRequest:
        """Turns TOTP on; returns the recovery codes, shown this once."""
        return auth_pb2.ConfirmTotpEnrolmentRequest(totp_code=totp_code)

    @rpc("RegenerateRecoveryCodes", items("recovery_codes", str))
    @staticmethod
    def regenerate_recovery_codes(
        *, totp_code: str = "", password: str = ""
    ) -> auth_pb2.RegenerateRecoveryCodesRequest:
        """New recovery codes (the old ones stop working); proves presence with either."""
        return auth_pb2.RegenerateRecoveryCodesRequest(totp_code=totp_code, password=password)

    @rpc("ListSessions", items("sessions", auth_pb2.Session))
    @staticmethod
    def sessions(user_id: str = "") -> auth_pb2.ListSessionsRequest:
        return auth_pb2.ListSessionsRequest(user_id=user_id)

    @rpc("RevokeSession", nothing)
    @staticmethod
    def revoke_session(session_id: str) -> auth_pb2.RevokeSessionRequest:
        return auth_pb2.RevokeSessionRequest(session_id=session_id)

    # --- channels and their members ------------------------------------------------------------

    @rpc("InviteMember", whole(Channel))
    @staticmethod
    def invite(channel_id: str, user_id: str) -> messaging_pb2.MemberActionRequest:
        return messaging_pb2.MemberActionRequest(channel_id=channel_id, user_id=user_id)

    @rpc("KickMember", whole(Channel))
    @staticmethod
    def kick(channel_id: str, user_id: str, *, reason: str = "") -> messaging_pb2.MemberActionRequest:
        return messaging_pb2.MemberActionRequest(channel_id=channel_id, user_id=user_id, reason=reason)

    # A ban takes what a kick takes, lifting it what an invitation takes.
    ban = rpc("BanMember", whole(Channel))(kick.request)
    unban = rpc("UnbanMember", whole(Channel))(invite.request)

    @rpc("SetMemberRole", whole(Channel))
    @staticmethod
    def set_role(channel_id: str, user_id: str, role: str) -> messaging_pb2.SetMemberRoleRequest:
        return messaging_pb2.SetMemberRoleRequest(channel_id=channel_id, user_id=user_id, role=role)

    @rpc("UpdateChannel", whole(Channel))
    @staticmethod
    def rename(channel_id: str, name: str) -> messaging_pb2.UpdateChannelRequest:
        return messaging_pb2.UpdateChannelRequest(channel_id=channel_id, name=name)

    @rpc("UpdateChannel", whole(Channel))
    @staticmethod
    def set_topic(channel_id: str, topic: str) -> messaging_pb2.UpdateChannelRequest:
        return messaging_pb2.UpdateChannelRequest(channel_id=channel_id, topic=topic)

    @rpc("JoinChannel", whole(Channel))
    @staticmethod
    def join_channel(channel_id: str = "", *, name: str = "") -> messaging_pb2.JoinChannelRequest:
        """Join by id, or by `name` when exactly one channel the caller may join has it (several:
        FAILED_PRECONDITION naming their ids)."""
        return messaging_pb2.JoinChannelRequest(channel_id=channel_id, name=name)

    @rpc("LeaveChannel", whole(Channel))
    @staticmethod
    def leave_channel(channel_id: str) -> messaging_pb2.LeaveChannelRequest:
        return messaging_pb2.LeaveChannelRequest(channel_id=channel_id)

    @rpc("ListInvitations", items("invitations", messaging_pb2.Invitation))
    @staticmethod
    def invitations() -> messaging_pb2.ListInvitationsRequest:
        """The caller's pending invitations, newest first: `join_channel(id)` accepts one,
        `decline_invitation(id)` drops it."""
        return messaging_pb2.ListInvitationsRequest()

    @rpc("DeclineInvitation", nothing)
    @staticmethod
    def decline_invitation(channel_id: str) -> messaging_pb2.DeclineInvitationRequest:
        """NOT_FOUND when the caller has no pending invitation to that channel."""
        return messaging_pb2.DeclineInvitationRequest(channel_id=channel_id)

    @rpc("ListMyChannels", items("channels", Channel))
    @staticmethod
    def my_channels() -> messaging_pb2.ListMyChannelsRequest:
        return messaging_pb2.ListMyChannelsRequest()

    # --- messages ------------------------------------------------------------------------------

    @rpc("React", whole(messaging_pb2.ChatMessage), write=True)
    @staticmethod
    def react(channel_id: str, channel_seq: int, emoji: str, *, remove: bool = False) -> messaging_pb2.ReactRequest:
        """`emoji`: one emoji of Unicode's list (👍, 👍🏽, 🇫🇷) or its `:shortcode:` (`:thumbs_up:`, `:+1:`),
        stored as the emoji; anything else is INVALID_ARGUMENT saying what is accepted."""
        return messaging_pb2.ReactRequest(channel_id=channel_id, channel_seq=channel_seq, emoji=emoji, remove=remove)

    @rpc("MarkRead", whole(Channel), write=True)
    @staticmethod
    def mark_read(channel_id: str, channel_seq: int) -> messaging_pb2.MarkReadRequest:
        """Move the caller's read marker forward; the channel then reports fewer unread messages."""
        return messaging_pb2.MarkReadRequest(channel_id=channel_id, channel_seq=channel_seq)

    @rpc("RedactMessage", whole(messaging_pb2.ChatMessage), write=True)
    @staticmethod
    def redact(channel_id: str, channel_seq: int, *, reason: str = "") -> messaging_pb2.RedactMessageRequest:
        return messaging_pb2.RedactMessageRequest(channel_id=channel_id, channel_seq=channel_seq, reason=reason)

    @rpc("ListMessageVersions", items("bodies", str))
    @staticmethod
    def message_versions(channel_id: str, channel_seq: int) -> messaging_pb2.ListMessageVersionsRequest:
        """Every text a message had (moderators only)."""
        return messaging_pb2.ListMessageVersionsRequest(channel_id=channel_id, channel_seq=channel_seq)

    # --- devices and their keys (E2eeDevice makes these calls) ---------------------------------

    @rpc("PublishDeviceKeys", whole(auth_pb2.Device))
    @staticmethod
    def publish_device_keys(
        *, device_id: str, curve25519: bytes, ed25519: bytes, signature: bytes, display_name: str = ""
    ) -> auth_pb2.PublishDeviceKeysRequest:
        """Register a device's identity keys in auth's key directory (E2eeDevice.publish does this)."""
        return auth_pb2.PublishDeviceKeysRequest(
            device_id=device_id, curve25519=curve25519, ed25519=ed25519, signature=signature, display_name=display_name
        )

    @rpc("UploadOneTimeKeys", one("one_time_keys_left", int))
    @staticmethod
    def upload_one_time_keys(
        device_id: str,
        keys: Sequence[UploadedOneTimeKey],
        *,
        fallback_key: UploadedOneTimeKey | None = None,
    ) -> auth_pb2.UploadOneTimeKeysRequest:
        return auth_pb2.UploadOneTimeKeysRequest(device_id=device_id, keys=keys, fallback_key=fallback_key)

    @rpc("ListDevices", items("devices", auth_pb2.Device))
    @staticmethod
    def list_devices(user_ids: Sequence[str]) -> auth_pb2.ListDevicesRequest:
        """The devices of these users (unknown users have none)."""
        return auth_pb2.ListDevicesRequest(user_ids=list(user_ids))

    @rpc("ClaimOneTimeKey", whole(auth_pb2.ClaimedOneTimeKey))
    @staticmethod
    def claim_one_time_key(user_id: str, device_id: str) -> auth_pb2.ClaimOneTimeKeyRequest:
        return auth_pb2.ClaimOneTimeKeyRequest(user_id=user_id, device_id=device_id)

    @rpc("RemoveDevice", nothing)
    @staticmethod
    def remove_device(device_id: str) -> auth_pb2.RemoveDeviceRequest:
        """Remove one of your own devices: its keys and queued messages go; others stop encrypting to it."""
        return auth_pb2.RemoveDeviceRequest(device_id=device_id)

    @rpc("SendToDevice", nothing)
    @staticmethod
    def send_to_device(messages: Sequence[ToDeviceSent]) -> messaging_pb2.SendToDeviceRequest:
        return messaging_pb2.SendToDeviceRequest(messages=messages)

    @rpc("FetchToDevice", items("messages", ToDeviceSent))
    @staticmethod
    def fetch_to_device(device_id: str, *, after_queue_seq: int) -> messaging_pb2.FetchToDeviceRequest:
        return messaging_pb2.FetchToDeviceRequest(device_id=device_id, after_queue_seq=after_queue_seq)
