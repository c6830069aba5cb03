# Apache Kafka (KRaft, single node) on the local base image; the jars are the ones infra/kafka resolves from
# Maven Central. Built by infra/images/build.py with this folder as context: libs/, log4j2.xml, kafka_entrypoint.py.
ARG BASE
FROM ${BASE}
COPY libs /opt/kafka/libs
COPY log4j2.xml kafka_entrypoint.py /opt/kafka/
VOLUME /var/lib/kafka/data
EXPOSE 9092
ENTRYPOINT ["python3.11", "/opt/kafka/kafka_entrypoint.py"]
