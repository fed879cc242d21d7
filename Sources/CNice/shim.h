#ifndef DNA_CNICE_SHIM_H
#define DNA_CNICE_SHIM_H
#include <stun/stunagent.h>
#include <stun/stunmessage.h>
#include <sys/socket.h>
#include <nice/agent.h>
#include <glib-unix.h>
#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <netinet/in.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* linux/udp.h: generic segmentation offload, Linux 4.18 */
#endif
#define DNA_UDP_BATCH_MAX 64 /* the kernel's UDP_MAX_SEGMENTS */

/* Sends count datagrams, laid end to end in bytes with their lengths, from the UDP socket fd to
   `to`. With *gso set, each run of equal-sized datagrams (a shorter one may end it) up to 64 and
   65,000 bytes goes in one sendmsg with UDP_SEGMENT: one system call and one trip through the stack
   for the run, cut into datagrams by the kernel (or the NIC) and arriving as separate datagrams.
   A kernel that refuses it clears *gso, and datagrams then go one sendto each. A datagram the
   kernel could not take (a full buffer, an unreachable network) is dropped, as UDP drops it.
   Returns the number of system calls made. */
static inline int dna_udp_send_batch(int fd, const struct sockaddr *to, socklen_t to_length,
                                     const uint8_t *bytes, const size_t *lengths, int count, int *gso) {
    struct iovec iov[DNA_UDP_BATCH_MAX];
    const uint8_t *starts[DNA_UDP_BATCH_MAX];
    int index = 0, calls = 0;
    size_t offset = 0;
    while (index < count) {
        int run = 0;
        size_t total = 0, segment = lengths[index];
        while (index + run < count && run < DNA_UDP_BATCH_MAX) {
            size_t length = lengths[index + run];
            if (*gso && (length > segment || total + length > 65000)) break;
            starts[run] = bytes + offset + total;
            iov[run].iov_base = (void *)starts[run];
            iov[run].iov_len = length;
            total += length;
            run++;
            if (*gso && length < segment) break; /* a shorter datagram ends a run */
        }
        if (*gso && run > 1) {
            union { char buffer[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } control;
            struct msghdr message;
            memset(&control, 0, sizeof control);
            memset(&message, 0, sizeof message);
            message.msg_name = (void *)to;
            message.msg_namelen = to_length;
            message.msg_iov = iov;
            message.msg_iovlen = (size_t)run;
            message.msg_control = control.buffer;
            message.msg_controllen = sizeof control.buffer;
            struct cmsghdr *header = CMSG_FIRSTHDR(&message);
            header->cmsg_level = SOL_UDP;
            header->cmsg_type = UDP_SEGMENT;
            header->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t size = (uint16_t)segment;
            memcpy(CMSG_DATA(header), &size, sizeof size);
            if (sendmsg(fd, &message, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 &&
                (errno == EINVAL || errno == EIO || errno == ENOPROTOOPT || errno == EOPNOTSUPP)) {
                *gso = 0; /* not here (an old kernel, a device without checksum offload): one by one */
                continue;
            }
            calls++;
        } else {
            for (int i = 0; i < run; i++) { /* dropped when it fails, as UDP drops */
                (void)sendto(fd, starts[i], lengths[index + i], MSG_DONTWAIT | MSG_NOSIGNAL, to, to_length);
                calls++;
            }
        }
        index += run;
        offset += total;
    }
    return calls;
}

/* Answers a STUN Binding request (RFC 8489) with XOR-MAPPED-ADDRESS = from, using libnice's STUN
   agent. Returns the response length in out, or 0 when the datagram is not a valid Binding request
   (it is then dropped). */
static inline size_t dna_stun_answer_binding(const uint8_t *request, size_t request_len,
                                             const struct sockaddr *from, socklen_t from_len,
                                             uint8_t *out, size_t out_capacity) {
    StunAgent agent;
    StunMessage message, response;
    /* libnice's own discovery requests are RFC 3489's (no magic cookie): those get a classic
       MAPPED-ADDRESS answer, RFC 8489 requests an XOR-MAPPED-ADDRESS one. */
    int classic = request_len >= 8 && !(request[4] == 0x21 && request[5] == 0x12 && request[6] == 0xA4 && request[7] == 0x42);
    stun_agent_init(&agent, STUN_ALL_KNOWN_ATTRIBUTES, classic ? STUN_COMPATIBILITY_RFC3489 : STUN_COMPATIBILITY_RFC5389,
                    (StunAgentUsageFlags)(STUN_AGENT_USAGE_IGNORE_CREDENTIALS | (classic ? 0 : STUN_AGENT_USAGE_ADD_SOFTWARE)));
    if (stun_agent_validate(&agent, &message, request, request_len, NULL, NULL) != STUN_VALIDATION_SUCCESS)
        return 0;
    if (stun_message_get_class(&message) != STUN_REQUEST || stun_message_get_method(&message) != STUN_BINDING)
        return 0;
    if (!stun_agent_init_response(&agent, &response, out, out_capacity, &message))
        return 0;
    if (classic) {
        if (stun_message_append_addr(&response, STUN_ATTRIBUTE_MAPPED_ADDRESS, from, from_len) != STUN_MESSAGE_RETURN_SUCCESS)
            return 0;
    } else if (stun_message_append_xor_addr(&response, STUN_ATTRIBUTE_XOR_MAPPED_ADDRESS, from, from_len) != STUN_MESSAGE_RETURN_SUCCESS)
        return 0;
    return stun_agent_finish_message(&agent, &response, NULL, 0);
}

/* Restricts gathering to `ip` (libnice then uses only the addresses added this way, loopback ones
   included, instead of every interface's but loopback). Returns 0 when libnice refused it. */
static inline int dna_nice_add_local_address(NiceAgent *agent, const char *ip) {
    NiceAddress address;
    nice_address_init(&address);
    if (!nice_address_set_from_string(&address, ip)) return 0;
    return nice_agent_add_local_address(agent, &address) ? 1 : 0;
}

/* GObject calls that are variadic or macros in C, as typed functions Swift can call. */
static inline void dna_nice_set_bool(NiceAgent *agent, const char *name, gboolean value) {
    g_object_set(G_OBJECT(agent), name, value, NULL);
}
static inline void dna_nice_set_uint(NiceAgent *agent, const char *name, guint value) {
    g_object_set(G_OBJECT(agent), name, value, NULL);
}
static inline void dna_nice_set_string(NiceAgent *agent, const char *name, const char *value) {
    g_object_set(G_OBJECT(agent), name, value, NULL);
}

typedef void (*dna_gathering_done_fn)(NiceAgent *agent, guint stream_id, gpointer data);
typedef void (*dna_state_changed_fn)(NiceAgent *agent, guint stream_id, guint component_id, guint state, gpointer data);
typedef void (*dna_new_candidate_fn)(NiceAgent *agent, NiceCandidate *candidate, gpointer data);
typedef void (*dna_selected_pair_fn)(NiceAgent *agent, guint stream_id, guint component_id,
                                     NiceCandidate *local, NiceCandidate *remote, gpointer data);

static inline gulong dna_connect_gathering_done(NiceAgent *agent, dna_gathering_done_fn fn, gpointer data) {
    return g_signal_connect(agent, "candidate-gathering-done", G_CALLBACK(fn), data);
}
static inline gulong dna_connect_state_changed(NiceAgent *agent, dna_state_changed_fn fn, gpointer data) {
    return g_signal_connect(agent, "component-state-changed", G_CALLBACK(fn), data);
}
static inline gulong dna_connect_new_candidate(NiceAgent *agent, dna_new_candidate_fn fn, gpointer data) {
    return g_signal_connect(agent, "new-candidate-full", G_CALLBACK(fn), data);
}
static inline gulong dna_connect_selected_pair(NiceAgent *agent, dna_selected_pair_fn fn, gpointer data) {
    return g_signal_connect(agent, "new-selected-pair-full", G_CALLBACK(fn), data);
}

/* Runs fn(data) once on the loop of ctx (not inline, even when the caller could own ctx). */
static inline void dna_main_context_post(GMainContext *ctx, GSourceFunc fn, gpointer data) {
    GSource *source = g_idle_source_new();
    g_source_set_priority(source, G_PRIORITY_DEFAULT);
    g_source_set_callback(source, fn, data, NULL);
    g_source_attach(source, ctx);
    g_source_unref(source);
}

/* A source on ctx that calls fn while fd is readable (or hung up); destroy it with g_source_destroy. */
static inline GSource *dna_fd_watch(GMainContext *ctx, int fd, GUnixFDSourceFunc fn, gpointer data) {
    GSource *source = g_unix_fd_source_new(fd, (GIOCondition)(G_IO_IN | G_IO_HUP | G_IO_ERR));
    g_source_set_callback(source, (GSourceFunc)(void (*)(void))fn, data, NULL);
    g_source_attach(source, ctx);
    return source;
}

/* A timer on ctx: fn(data) after ms, again while it returns TRUE. */
static inline GSource *dna_timer(GMainContext *ctx, guint ms, GSourceFunc fn, gpointer data) {
    GSource *source = g_timeout_source_new(ms);
    g_source_set_callback(source, fn, data, NULL);
    g_source_attach(source, ctx);
    return source;
}

/* An alarm on ctx: a source that calls fn(data) once its deadline (monotonic microseconds, as
   g_get_monotonic_time; 0 = at once, -1 = never) has come. The deadline is cleared before fn runs,
   so fn sets the next one. It is kept in the source, not in GLib's ready time: the loop reads it in
   prepare before every poll, so the loop thread sets it without waking its own loop (each
   g_source_set_ready_time signals the context's wakeup, and every service pass then cost the loop
   one more iteration: an eventfd write, a poll and a read). Other threads wake the loop when they
   bring the deadline forward. Stop it with dna_alarm_destroy, then g_source_unref. */
typedef struct {
    GSource source;
    gint64 deadline; /* read and written with __atomic builtins */
    gint destroyed;  /* dna_alarm_destroy ran (__atomic) */
} DnaAlarm;
static gboolean dna_alarm_due(GSource *source, gint *timeout) {
    gint64 deadline = __atomic_load_n(&((DnaAlarm *)source)->deadline, __ATOMIC_ACQUIRE);
    if (deadline < 0) {
        if (timeout) *timeout = -1;
        return FALSE;
    }
    gint64 now = g_source_get_time(source);
    if (deadline <= now) {
        if (timeout) *timeout = 0;
        return TRUE;
    }
    gint64 ms = (deadline - now + 999) / 1000;
    if (timeout) *timeout = ms > G_MAXINT ? G_MAXINT : (gint)ms;
    return FALSE;
}
static gboolean dna_alarm_prepare(GSource *source, gint *timeout) { return dna_alarm_due(source, timeout); }
static gboolean dna_alarm_check(GSource *source) { return dna_alarm_due(source, NULL); }
static gboolean dna_alarm_dispatch(GSource *source, GSourceFunc callback, gpointer data) {
    __atomic_store_n(&((DnaAlarm *)source)->deadline, (gint64)-1, __ATOMIC_RELEASE);
    if (callback)
        callback(data);
    return G_SOURCE_CONTINUE;
}
static GSourceFuncs dna_alarm_funcs = { dna_alarm_prepare, dna_alarm_check, dna_alarm_dispatch, NULL, NULL, NULL };
static inline GSource *dna_alarm_new(GMainContext *ctx, GSourceFunc fn, gpointer data) {
    GSource *source = g_source_new(&dna_alarm_funcs, sizeof(DnaAlarm));
    ((DnaAlarm *)source)->deadline = -1;
    g_source_set_callback(source, fn, data, NULL);
    g_source_attach(source, ctx);
    return source;
}
/* Sets the alarm's deadline (see dna_alarm_new). From a thread other than the loop's, the loop is
   woken when the deadline comes sooner than it was (a loop asleep in poll would miss it), not when
   it was due at once already (whoever set that woke it). */
static inline void dna_alarm_set(GSource *source, gint64 deadline) {
    if (__atomic_load_n(&((DnaAlarm *)source)->destroyed, __ATOMIC_ACQUIRE))
        return;
    gint64 before = __atomic_exchange_n(&((DnaAlarm *)source)->deadline, deadline, __ATOMIC_ACQ_REL);
    if (deadline < 0 || (before >= 0 && before <= deadline))
        return;
    GMainContext *context = g_source_get_context(source);
    if (context && !g_main_context_is_owner(context))
        g_main_context_wakeup(context);
}
/* Stops the alarm for good: it never fires again and later sets do nothing. Idempotent. The
   caller's reference keeps the source (and its context pointer) valid for a set racing with this
   on another thread, until the caller unrefs it. */
static inline void dna_alarm_destroy(GSource *source) {
    __atomic_store_n(&((DnaAlarm *)source)->destroyed, 1, __ATOMIC_RELEASE);
    g_source_destroy(source);
}

/* The textual address of a NiceAddress (INET6_ADDRSTRLEN bytes at out). */
static inline void dna_nice_address_text(const NiceAddress *address, char *out) {
    nice_address_to_string(address, out);
}

/* Sets a candidate's foundation (truncated to NICE_CANDIDATE_MAX_FOUNDATION - 1 bytes). */
static inline void dna_candidate_set_foundation(NiceCandidate *candidate, const char *foundation) {
    g_strlcpy(candidate->foundation, foundation, NICE_CANDIDATE_MAX_FOUNDATION);
}

/* Frees a list of candidates from nice_agent_get_local_candidates. */
static inline void dna_candidate_list_free(GSList *list) {
    g_slist_free_full(list, (GDestroyNotify)nice_candidate_free);
}
#endif
