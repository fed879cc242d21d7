/* The benchmark's baseline: bare libnice used the plain way (gather everything, then check, wait for
 * READY), with libnice's default settings. Driven by Tests/lab/nat_baselines.py over stdin/stdout:
 *
 *   nice_plain FD [--stun IP:PORT] [--turn IP:PORT USER PASSWORD] [--controlling]
 *   -> LOCAL ufrag pwd / CAND sdp-line... / END          (after candidate-gathering-done)
 *   <- REMOTE ufrag pwd / CAND sdp-line... / END
 *   -> READY local-type remote-type  or  FAILED           (component state READY or FAILED)
 *   then whole datagrams are forwarded between the peer and FD (a datagram socket) until stdin closes.
 */
#include <nice/agent.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static NiceAgent *agent;
static guint stream;
static int app_fd;
static GMainLoop *loop;
static GSList *remote;
static int reported;

static void gathering_done(NiceAgent *a, guint stream_id, gpointer data) {
    gchar *ufrag = NULL, *pwd = NULL;
    GSList *list, *item;
    (void)data;
    nice_agent_get_local_credentials(a, stream_id, &ufrag, &pwd);
    printf("LOCAL %s %s\n", ufrag, pwd);
    list = nice_agent_get_local_candidates(a, stream_id, 1);
    for (item = list; item; item = item->next) {
        gchar *sdp = nice_agent_generate_local_candidate_sdp(a, item->data);
        printf("CAND %s\n", sdp);
        g_free(sdp);
    }
    g_slist_free_full(list, (GDestroyNotify)nice_candidate_free);
    printf("END\n");
    fflush(stdout);
    g_free(ufrag);
    g_free(pwd);
}

static const char *type_name(NiceCandidateType type) {
    return type == NICE_CANDIDATE_TYPE_HOST ? "host" : type == NICE_CANDIDATE_TYPE_RELAYED ? "relay" : "reflexive";
}

static void state_changed(NiceAgent *a, guint stream_id, guint component, guint state, gpointer data) {
    NiceCandidate *local = NULL, *peer = NULL;
    (void)data;
    if (reported) return;
    if (state == NICE_COMPONENT_STATE_READY && nice_agent_get_selected_pair(a, stream_id, component, &local, &peer)) {
        printf("READY %s %s\n", type_name(local->type), type_name(peer->type));
        reported = 1;
    } else if (state == NICE_COMPONENT_STATE_FAILED) {
        printf("FAILED\n");
        reported = 1;
    }
    fflush(stdout);
}

static void received(NiceAgent *a, guint stream_id, guint component, guint len, gchar *buf, gpointer data) {
    (void)a; (void)stream_id; (void)component; (void)data;
    if (send(app_fd, buf, len, MSG_DONTWAIT) < 0) { /* dropped, as UDP would */ }
}

static gboolean from_app(gint fd, GIOCondition condition, gpointer data) {
    static char buffer[65536];
    ssize_t n;
    (void)condition; (void)data;
    while ((n = recv(fd, buffer, sizeof buffer, MSG_DONTWAIT)) >= 0)
        nice_agent_send(agent, stream, 1, (guint)n, buffer);
    return G_SOURCE_CONTINUE;
}

static gboolean from_stdin(GIOChannel *channel, GIOCondition condition, gpointer data) {
    gchar *line = NULL;
    gsize length = 0;
    (void)condition; (void)data;
    if (g_io_channel_read_line(channel, &line, &length, NULL, NULL) != G_IO_STATUS_NORMAL) {
        g_main_loop_quit(loop);
        return G_SOURCE_REMOVE;
    }
    g_strchomp(line);
    if (g_str_has_prefix(line, "REMOTE ")) {
        gchar **parts = g_strsplit(line + 7, " ", 2);
        if (parts[0] && parts[1]) nice_agent_set_remote_credentials(agent, stream, parts[0], parts[1]);
        g_strfreev(parts);
    } else if (g_str_has_prefix(line, "CAND ")) {
        NiceCandidate *candidate = nice_agent_parse_remote_candidate_sdp(agent, stream, line + 5);
        if (candidate) remote = g_slist_append(remote, candidate);
    } else if (strcmp(line, "END") == 0) {
        nice_agent_set_remote_candidates(agent, stream, 1, remote);
        g_slist_free_full(remote, (GDestroyNotify)nice_candidate_free);
        remote = NULL;
    }
    g_free(line);
    return G_SOURCE_CONTINUE;
}

int main(int argc, char **argv) {
    int i, controlling = 0;
    GIOChannel *in;
    if (argc < 2) {
        fprintf(stderr, "usage: nice_plain FD [--stun IP:PORT] [--turn IP:PORT USER PASSWORD] [--controlling]\n");
        return 2;
    }
    app_fd = atoi(argv[1]);
    loop = g_main_loop_new(NULL, FALSE);
    agent = nice_agent_new(NULL, NICE_COMPATIBILITY_RFC5245);
    g_object_set(agent, "upnp", FALSE, NULL);
    stream = nice_agent_add_stream(agent, 1);
    for (i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--controlling") == 0) {
            controlling = 1;
        } else if (strcmp(argv[i], "--stun") == 0 && i + 1 < argc) {
            gchar **hp = g_strsplit(argv[++i], ":", 2);
            g_object_set(agent, "stun-server", hp[0], "stun-server-port", (guint)atoi(hp[1] ? hp[1] : "3478"), NULL);
            g_strfreev(hp);
        } else if (strcmp(argv[i], "--turn") == 0 && i + 3 < argc) {
            gchar **hp = g_strsplit(argv[i + 1], ":", 2);
            guint port = (guint)atoi(hp[1] ? hp[1] : "3478");
            nice_agent_set_relay_info(agent, stream, 1, hp[0], port, argv[i + 2], argv[i + 3], NICE_RELAY_TYPE_TURN_UDP);
            nice_agent_set_relay_info(agent, stream, 1, hp[0], port, argv[i + 2], argv[i + 3], NICE_RELAY_TYPE_TURN_TCP);
            g_strfreev(hp);
            i += 3;
        }
    }
    g_object_set(agent, "controlling-mode", controlling, NULL);
    g_signal_connect(agent, "candidate-gathering-done", G_CALLBACK(gathering_done), NULL);
    g_signal_connect(agent, "component-state-changed", G_CALLBACK(state_changed), NULL);
    nice_agent_attach_recv(agent, stream, 1, NULL, received, NULL);
    g_unix_fd_add(app_fd, G_IO_IN, from_app, NULL);
    in = g_io_channel_unix_new(0);
    g_io_add_watch(in, G_IO_IN | G_IO_HUP, from_stdin, NULL);
    nice_agent_gather_candidates(agent, stream);
    g_main_loop_run(loop);
    nice_agent_remove_stream(agent, stream);
    g_object_unref(agent);
    return 0;
}
